//! Turning a [`Config`] into the objects of a run: the device, the network with its
//! PatchConvMoE layers, the optimizer and LR schedule, the datasets and their loaders. Every
//! command (train, eval, predict, routing analysis, bench) builds through here.

use crate::backend::Device;
use crate::data::{
    AugmentConfig, Bdd100k, Cityscapes, ClassMap, Dataset, Loader, LoaderConfig, RequireClasses,
    SceneKind, Split, Subset, Synthetic, SyntheticConfig,
};
use crate::error::{Error, Result};
use crate::models::vit::{MoeLayers, VitConfig, VitMoeConfig, VitSize};
use crate::models::vit_seg::SegVit;
use crate::models::{build, ModelConfig, ModelName, SegNet};
use crate::moe::{
    replace_conv_with_moe, replace_conv_with_soft_moe, BalanceLoss, ExpertInit, GateConfig,
    GateKind, Granularity, PatchConvMoE, PatchConvMoeConfig, SlotSource, SoftConvMoeConfig,
};
use crate::nn::{visit_modules, Module};
use crate::optim::{Adam, AdamOptions, LrSchedule, Optimizer, ParamGroup, Sgd, SgdOptions};
use crate::tensor::Tensor;
use crate::train::config::{Config, DataConfig, ModelSection, MoeSection, OptimConfig};
use std::path::Path;
use std::sync::Arc;

/// Resolves `--device` / `train.device` for the networks (train, eval, predict, bench
/// train): `cpu`; `cuda` or `cuda:N` (a GPU, an error saying why when it cannot be used);
/// `cuda-emu` or `cuda-emu:N` (the CUDA kernels emulated on the CPU: slow, for tests and
/// debugging; an error when no host C++ compiler is found); `auto`, CUDA device 0 when it is
/// usable, else the CPU with the reason in one line (`auto` never picks the emulator).
pub fn resolve_device(request: &str) -> Result<(Device, Option<String>)> {
    Device::select(request)
}

/// The token granularity of `[model.moe]`.
fn moe_granularity(moe: &MoeSection) -> Result<Granularity> {
    let granularity = match moe.granularity.as_str() {
        "grid" => Granularity::Grid(moe.grid),
        "patch" => Granularity::PatchSize(moe.patch_size),
        "image" => Granularity::Image,
        other => {
            return Err(Error::invalid(
                "config",
                format!("model.moe.granularity = `{other}`: expected grid, patch or image"),
            ))
        }
    };
    if matches!(granularity, Granularity::Grid(0))
        || matches!(granularity, Granularity::PatchSize(p) if p.contains(&0))
    {
        return Err(Error::invalid(
            "config",
            "model.moe.grid (granularity grid) and model.moe.patch_size (granularity patch) must be \
             positive",
        ));
    }
    Ok(granularity)
}

/// The expert initialisation of `[model.moe]`.
fn expert_init(moe: &MoeSection) -> Result<ExpertInit> {
    match moe.init.as_str() {
        "kaiming" => Ok(ExpertInit::KaimingNormal),
        "copy" => Ok(ExpertInit::Copy {
            noise_std: moe.init_noise,
        }),
        other => Err(Error::invalid(
            "config",
            format!("model.moe.init = `{other}`: expected kaiming or copy"),
        )),
    }
}

/// The SoftConvMoE hyper-parameters of `[model.moe]` (`routing = "soft"`).
pub fn soft_moe_config(moe: &MoeSection) -> Result<SoftConvMoeConfig> {
    Ok(SoftConvMoeConfig {
        num_experts: moe.num_experts,
        slots_per_expert: moe.slots_per_expert,
        granularity: moe_granularity(moe)?,
        normalize: moe.soft_normalize,
        init: expert_init(moe)?,
    })
}

/// The PatchConvMoE hyper-parameters of `[model.moe]`.
pub fn moe_config(moe: &MoeSection) -> Result<PatchConvMoeConfig> {
    let granularity = moe_granularity(moe)?;
    let kind: GateKind = moe.gate.parse()?;
    let init = expert_init(moe)?;
    let gate = GateConfig {
        kind,
        kernel: (moe.gate_kernel > 0).then_some(moe.gate_kernel),
    };
    gate.conv_kernel()?;
    Ok(PatchConvMoeConfig {
        num_experts: moe.num_experts,
        k: moe.k,
        granularity,
        gate,
        loss: moe.loss.parse::<BalanceLoss>()?,
        alpha: moe.alpha,
        straight_through: moe.straight_through,
        noise_std: moe.noise,
        capacity_factor: (moe.capacity > 0.0).then_some(moe.capacity),
        shared_expert: moe.shared_expert,
        init,
    })
}

/// The network's name.
pub fn model_name(model: &ModelSection) -> Result<ModelName> {
    model.name.parse()
}

/// The convs replaced by PatchConvMoE layers (none when MoE is off; the network's default
/// placement when `paths` is empty).
pub fn moe_paths(model: &ModelSection) -> Result<Vec<String>> {
    if !model.moe.enabled {
        return Ok(Vec::new());
    }
    if model.moe.paths.is_empty() {
        return Ok(vec![model_name(model)?.default_moe_path().to_string()]);
    }
    Ok(model.moe.paths.clone())
}

/// Builds the network with fresh weights (from the current default generator: seed it first)
/// and puts PatchConvMoE layers at the configured paths.
pub fn build_model(model: &ModelSection) -> Result<Box<dyn SegNet>> {
    if crate::train::config_dynamic::is_dynamic_name(&model.name) {
        if model.moe.enabled {
            return Err(Error::invalid(
                "config",
                "model.moe (PatchConvMoE) does not apply to the dynamic routing networks",
            ));
        }
        let net = crate::train::config_dynamic::build_dynamic(
            &model.name,
            model.num_classes,
            &model.dynamic,
        )?;
        return Ok(Box::new(net));
    }
    if model.name == VIT_SEG_NAME {
        if model.moe.enabled {
            return Err(Error::invalid(
                "config",
                "model.moe (PatchConvMoE) does not apply to `vit`; use model.vit.soft_moe",
            ));
        }
        return Ok(Box::new(SegVit::new(vit_config(model)?)?));
    }
    let name = model_name(model)?;
    let mut net = build(
        name,
        &ModelConfig {
            num_classes: model.num_classes,
            backbone_depth: model.backbone_depth,
            pspnet_dilation: model.pspnet_dilation.parse()?,
        },
    )?;
    let paths = moe_paths(model)?;
    if !paths.is_empty() {
        let soft = match model.moe.routing.as_str() {
            "sparse" => None,
            "soft" => Some(soft_moe_config(&model.moe)?),
            other => {
                return Err(Error::invalid(
                    "config",
                    format!("model.moe.routing = `{other}`: expected sparse or soft"),
                ))
            }
        };
        let sparse = moe_config(&model.moe)?;
        for path in &paths {
            let root = &mut *net as &mut dyn Module;
            match soft {
                Some(config) => replace_conv_with_soft_moe(root, path, config),
                None => replace_conv_with_moe(root, path, sparse),
            }
            .map_err(|e| {
                Error::invalid(
                    "config",
                    format!("model.moe.paths: `{path}` in {name}: {e}"),
                )
            })?;
        }
    }
    Ok(net)
}

/// `[model] name` of the segmentation ViT.
pub const VIT_SEG_NAME: &str = "vit";

/// The ViT configuration of `[model.vit]` (class token, pooling and image-size strictness are
/// set by [`SegVit::new`]).
pub fn vit_config(model: &ModelSection) -> Result<VitConfig> {
    let section = &model.vit;
    let (embed_dim, depth, num_heads) = match section.size.as_str() {
        "" => (section.embed_dim, section.depth, section.num_heads),
        name => VitSize::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
            .ok_or_else(|| {
                Error::invalid(
                    "config",
                    format!(
                        "model.vit.size `{name}`: expected tiny, small, base, large, huge or \"\""
                    ),
                )
            })?
            .dims(),
    };
    let slot_source = match section.slot_source.as_str() {
        "normalized" => SlotSource::Normalized,
        "raw" => SlotSource::Raw,
        other => {
            return Err(Error::invalid(
                "config",
                format!("model.vit.slot_source `{other}`: expected normalized or raw"),
            ))
        }
    };
    let moe = section
        .soft_moe
        .then(|| {
            Ok::<_, Error>(VitMoeConfig {
                num_experts: section.num_experts,
                slots_per_expert: section.slots_per_expert,
                layers: MoeLayers::parse(&section.moe_layer_index)?,
                slot_source,
            })
        })
        .transpose()?;
    Ok(VitConfig {
        img_size: section.img_size,
        patch_size: section.patch_size,
        num_classes: model.num_classes,
        embed_dim,
        depth,
        num_heads,
        mlp_ratio: section.mlp_ratio,
        moe,
        ..VitConfig::vit(VitSize::Tiny)
    })
}

/// Every PatchConvMoE layer of a network with its path.
pub fn moe_layers(model: &dyn Module) -> Vec<(String, &PatchConvMoE)> {
    let mut layers = Vec::new();
    // The visitor's references do not outlive the call: collect paths, then look them up.
    visit_modules(model, &mut |path, m| {
        if m.as_any().is::<PatchConvMoE>() {
            layers.push(path.to_string());
        }
    });
    layers
        .into_iter()
        .filter_map(|path| {
            crate::nn::get_module(model, &path)
                .ok()
                .and_then(|m| m.as_any().downcast_ref::<PatchConvMoE>())
                .map(|moe| (path, moe))
        })
        .collect()
}

/// Sends every token of every MoE layer to expert `e` (`Some(e)`), or back to normal routing.
pub fn set_fixed_expert(model: &dyn Module, expert: Option<usize>) -> Result<()> {
    for (path, moe) in moe_layers(model) {
        moe.set_fixed_expert(expert)
            .map_err(|e| Error::invalid("fixed expert", format!("`{path}`: {e}")))?;
    }
    Ok(())
}

/// Parameters whose name contains this get `optim.gate_lr_multi` (the original's solver rule).
pub const GATE_PARAM_MARK: &str = "gate_conv";

/// The optimizer of `[optim]` over the network's parameters: one group, or two when
/// `gate_lr_multi` ≠ 1 and some parameter names contain `gate_conv` (the gates, lr × multi).
pub fn build_optimizer(
    optim: &OptimConfig,
    params: Vec<(String, Tensor)>,
) -> Result<Box<dyn Optimizer>> {
    if optim.gate_lr_multi.is_nan() || optim.gate_lr_multi <= 0.0 {
        return Err(Error::invalid(
            "config",
            format!(
                "optim.gate_lr_multi = {}: must be positive",
                optim.gate_lr_multi
            ),
        ));
    }
    // With a gate multiplier: group 0 the rest, group 1 the `gate_conv` parameters.
    let (gates, rest): (Vec<_>, Vec<_>) = params
        .into_iter()
        .partition(|(name, _)| optim.gate_lr_multi != 1.0 && name.contains(GATE_PARAM_MARK));
    let split = |lr: f64| -> Vec<(Vec<(String, Tensor)>, f64)> {
        let mut groups = vec![(rest.clone(), lr)];
        if !gates.is_empty() {
            groups.push((gates.clone(), lr * optim.gate_lr_multi));
        }
        groups
    };
    Ok(match optim.name.as_str() {
        "sgd" => Box::new(Sgd::new(
            split(optim.lr)
                .into_iter()
                .map(|(params, lr)| {
                    ParamGroup::new(
                        params,
                        SgdOptions {
                            momentum: optim.momentum,
                            nesterov: optim.nesterov,
                            weight_decay: optim.weight_decay,
                            ..SgdOptions::new(lr)
                        },
                    )
                })
                .collect(),
        )?),
        "adam" | "adamw" => {
            let base = if optim.name == "adamw" {
                AdamOptions::adamw(optim.lr)
            } else {
                AdamOptions::new(optim.lr)
            };
            Box::new(Adam::new(
                split(optim.lr)
                    .into_iter()
                    .map(|(params, lr)| {
                        ParamGroup::new(
                            params,
                            AdamOptions {
                                lr,
                                betas: (optim.betas[0], optim.betas[1]),
                                eps: optim.eps,
                                weight_decay: optim.weight_decay,
                                ..base
                            },
                        )
                    })
                    .collect(),
            )?)
        }
        other => {
            return Err(Error::invalid(
                "config",
                format!("optim.name = `{other}`: expected sgd, adam or adamw"),
            ))
        }
    })
}

/// The LR schedule of `[optim]` over `total_steps` steps (warm-up included).
pub fn build_schedule(optim: &OptimConfig, total_steps: u64) -> Result<LrSchedule> {
    let after = total_steps.saturating_sub(optim.warmup_steps).max(1);
    let schedule = match optim.schedule.as_str() {
        "poly" => LrSchedule::Poly {
            total_steps: after,
            power: optim.power,
        },
        "cosine" => LrSchedule::cosine(after, optim.min_lr),
        "constant" => LrSchedule::Constant,
        other => {
            return Err(Error::invalid(
                "config",
                format!("optim.schedule = `{other}`: expected poly, cosine or constant"),
            ))
        }
    };
    let schedule = if optim.warmup_steps > 0 {
        schedule.with_warmup(optim.warmup_steps, optim.warmup_factor)
    } else {
        schedule
    };
    schedule.validate()?;
    Ok(schedule)
}

/// Opens split `split` of the configured dataset, filtered by `data.require_classes` and
/// with labels mapped by `data.class_map`.
pub fn open_dataset(data: &DataConfig, split: &str, train: bool) -> Result<Arc<dyn Dataset>> {
    let dataset = open_raw_dataset(data, split, train)?;
    let require = RequireClasses::parse(&data.require_classes, data.require_min_pixels)?;
    let map = ClassMap::parse(&data.class_map, &data.class_map_rest)?;
    if require.is_none() && map.is_none() {
        return Ok(dataset);
    }
    Ok(Arc::new(Subset::new(dataset, require, map.as_ref())?))
}

/// Checks `model.num_classes` against `data.class_map`.
pub fn check_class_map(config: &Config) -> Result<()> {
    if let Some(map) = ClassMap::parse(&config.data.class_map, &config.data.class_map_rest)? {
        if map.num_classes() != config.model.num_classes {
            return Err(Error::invalid(
                "config",
                format!(
                    "data.class_map gives {} classes {:?} but model.num_classes = {}: set \
                     model.num_classes={}",
                    map.num_classes(),
                    map.names,
                    config.model.num_classes,
                    map.num_classes()
                ),
            ));
        }
    }
    Ok(())
}

/// Opens split `split` of the configured dataset, unfiltered.
fn open_raw_dataset(data: &DataConfig, split: &str, train: bool) -> Result<Arc<dyn Dataset>> {
    let split_value: Split = split.parse()?;
    let root = Path::new(&data.root);
    let needs_root = || -> Result<()> {
        if data.root.is_empty() {
            return Err(Error::invalid(
                "config",
                format!(
                    "data.root is empty: give the {} root folder with --set data.root=PATH",
                    data.dataset
                ),
            ));
        }
        if !root.is_dir() {
            return Err(Error::file(
                root,
                format!(
                    "the {} root folder (data.root) does not exist",
                    data.dataset
                ),
            ));
        }
        Ok(())
    };
    Ok(match data.dataset.as_str() {
        "synthetic" => {
            let s = &data.synthetic;
            let config = SyntheticConfig {
                len: if train { s.train_len } else { s.val_len },
                height: s.height,
                width: s.width,
                // The validation images come from another stream than the training ones.
                seed: if train {
                    s.seed
                } else {
                    s.seed ^ 0x0005_eed0_f7a1
                },
            };
            Arc::new(Synthetic::new(config).with_scenes(&SceneKind::parse_list(&data.scene)?))
        }
        "cityscapes" => {
            needs_root()?;
            Arc::new(Cityscapes::open(root, split_value)?)
        }
        "bdd100k" => {
            needs_root()?;
            Arc::new(Bdd100k::open(root, split_value)?)
        }
        other => {
            return Err(Error::invalid(
                "config",
                format!("data.dataset = `{other}`: expected synthetic, cityscapes or bdd100k"),
            ))
        }
    })
}

/// `[h, w]` with `[0, 0]` meaning "not set".
fn optional_size(size: [usize; 2]) -> Option<[usize; 2]> {
    (size != [0, 0]).then_some(size)
}

/// `loader` with its own pool of `data.workers` threads (when > 0).
fn with_workers(loader: Loader, data: &DataConfig) -> Result<Loader> {
    if data.workers == 0 {
        return Ok(loader);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(data.workers)
        .build()
        .map_err(|e| {
            Error::invalid(
                "config",
                format!(
                    "data.workers = {}: cannot start the threads: {e}",
                    data.workers
                ),
            )
        })?;
    Ok(loader.with_thread_pool(Arc::new(pool)))
}

/// The loader of the training split: shuffled, augmented, incomplete last batch dropped.
pub fn train_loader(config: &Config, dataset: Arc<dyn Dataset>) -> Result<Loader> {
    let data = &config.data;
    let loader = Loader::new(
        dataset,
        LoaderConfig {
            batch_size: data.batch_size,
            shuffle: true,
            drop_last: true,
            augment: Some(AugmentConfig {
                scale: (data.scale[0], data.scale[1]),
                crop: optional_size(data.crop),
                flip: data.flip,
                color_jitter: data.color_jitter,
            }),
            resize: optional_size(data.resize),
            seed: config.train.seed,
            prefetch: data.prefetch,
        },
    )?;
    with_workers(loader, data)
}

/// The loader of an evaluation split: in order, no augmentation, every image.
pub fn eval_loader(config: &Config, dataset: Arc<dyn Dataset>) -> Result<Loader> {
    let data = &config.data;
    let loader = Loader::new(
        dataset,
        LoaderConfig {
            batch_size: data.val_batch_size.max(1),
            shuffle: false,
            drop_last: false,
            augment: None,
            resize: optional_size(data.resize),
            seed: config.train.seed,
            prefetch: data.prefetch,
        },
    )?;
    with_workers(loader, data)
}
