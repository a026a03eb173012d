//! `moeseg inspect`, `moeseg flops` and `moeseg forward`: a network's parameter keys, its
//! parameter and MAC counts, and a safetensors-in, safetensors-out forward (and training step)
//! for parity checks against PyTorch.

use crate::error::{Error, Result};
use crate::io::safetensors::{save, SafetensorsFile};
use crate::models::dynamic::{DynamicConfig, DynamicNet4Seg};
use crate::models::pspnet::PspDilation;
use crate::models::vit::{MoeLayers, VisionTransformer, VitConfig, VitModelName};
use crate::models::{
    build, complexity, complexity::parameter_counts, place_moe, training_loss, Complexity,
    ModelConfig, ModelName, MoePlacement, SegNet,
};
use crate::moe::{
    BalanceLoss, GateConfig, GateKind, Granularity, PatchConvMoeConfig, SoftConvMoeConfig,
};
use crate::nn::state_dict::{load_state_dict, LoadOptions};
use crate::nn::{named_tensors, set_training, Module, Role};
use crate::tensor::{DType, Tensor};
use clap::Args;
use std::path::PathBuf;

/// A `--model` value: a segmentation network or a (Soft-MoE) Vision Transformer classifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CliModel {
    /// One of the six segmentation networks.
    Seg(ModelName),
    /// `vit_<size>` or `soft_moe_vit_<size>`.
    Vit(VitModelName),
    /// A dynamic routing network: `dynamic16` or `dynamic33` (the layer count).
    Dynamic(usize),
}

impl From<ModelName> for CliModel {
    fn from(name: ModelName) -> Self {
        CliModel::Seg(name)
    }
}

impl std::fmt::Display for CliModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliModel::Seg(name) => name.fmt(f),
            CliModel::Vit(name) => name.fmt(f),
            CliModel::Dynamic(layers) => write!(f, "dynamic{layers}"),
        }
    }
}

impl std::str::FromStr for CliModel {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        if let Ok(vit) = name.parse::<VitModelName>() {
            return Ok(CliModel::Vit(vit));
        }
        if let Some(config) = crate::models::dynamic::DynamicConfig::named(name, 19) {
            return Ok(CliModel::Dynamic(config.layers));
        }
        name.parse::<ModelName>().map(CliModel::Seg).map_err(|_| {
            let known: Vec<&str> = ModelName::ALL.iter().map(|m| m.as_str()).collect();
            Error::invalid(
                "model",
                format!(
                    "unknown network `{name}`; known: {}, vit_{{tiny,small,base,large,huge}}, \
                     soft_moe_vit_{{tiny,small,base,large,huge}}, dynamic16, dynamic33",
                    known.join(", ")
                ),
            )
        })
    }
}

/// The network and its MoE layers, shared by `inspect`, `flops` and `forward`.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Network: enet, erfnet, unet, lraspp, deeplabv3plus or pspnet; or a Vision Transformer
    /// classifier vit_{tiny,small,base,large,huge} (timm) or soft_moe_vit_{tiny,…,huge} (the
    /// soft-moe package).
    #[arg(long)]
    pub model: CliModel,
    /// Output classes (default: 19 for the segmentation networks, 1000 for the ViTs).
    #[arg(long)]
    pub num_classes: Option<usize>,
    /// ViT input size (square; the positional embedding follows it). Default 224.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Soft-MoE ViT: experts per Soft-MoE layer (default 128).
    #[arg(long)]
    pub num_experts: Option<usize>,
    /// Slots per expert of the Soft-MoE ViT's layers and of `--routing soft` (default 1).
    #[arg(long)]
    pub slots_per_expert: Option<usize>,
    /// Soft-MoE ViT: the first Soft-MoE block (`6`: blocks 6 to the end) or a list of blocks
    /// (`0,2,5`). Default: the factory's (6 for tiny/small/base, 12 large, 16 huge).
    #[arg(long, value_name = "INDEX|LIST")]
    pub moe_layer_index: Option<String>,
    /// ResNet depth of DeepLabv3+'s and PSPNet's backbone (50 or 101).
    #[arg(long, default_value_t = 50)]
    pub backbone_depth: usize,
    /// PSPNet's backbone dilation rule: hszhao (default) or torchvision.
    #[arg(long, default_value = "hszhao")]
    pub pspnet_dilation: PspDilation,
    /// Replace the stride-1 conv at this parameter path by a PatchConvMoE (repeatable);
    /// `default` is the network's default placement (e.g. `regular5_1.ext_conv2.0` for ENet).
    #[arg(long = "moe", value_name = "PATH")]
    pub moe: Vec<String>,
    /// Experts per MoE layer (E).
    #[arg(long, default_value_t = 8)]
    pub experts: usize,
    /// Experts per token (k).
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Cut the feature map into a g×g grid of patches.
    #[arg(long, default_value_t = 3, conflicts_with = "patch_size")]
    pub grid: usize,
    /// Patches of an explicit size in pixels, `HxW` (instead of `--grid`).
    #[arg(long, value_name = "HxW")]
    pub patch_size: Option<String>,
    /// Gate network: gap_linear, conv_gap, 2conv_gap or 3conv_gap.
    #[arg(long, default_value = "2conv_gap")]
    pub gate: GateKind,
    /// Kernel of the gate's convs for 2conv_gap / 3conv_gap (1 or 3).
    #[arg(long)]
    pub gate_kernel: Option<usize>,
    /// Balancing loss: switch, entropy, importance, column_entropy or none.
    #[arg(long, default_value = "entropy")]
    pub loss: BalanceLoss,
    /// Weight of the balancing loss.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f32,
    /// Routing of the `--moe` layers: sparse (PatchConvMoE, top-k) or soft (SoftConvMoE, with
    /// `--slots-per-expert`).
    #[arg(long, default_value = "sparse", value_parser = ["sparse", "soft"])]
    pub routing: String,
}

impl ModelArgs {
    /// The MoE placements the flags describe (empty without `--moe`).
    pub fn placements(&self) -> Result<Vec<MoePlacement>> {
        let granularity = match &self.patch_size {
            Some(text) => Granularity::PatchSize(parse_size("--patch-size", text)?),
            None => Granularity::Grid(self.grid),
        };
        let config = PatchConvMoeConfig {
            num_experts: self.experts,
            k: self.k,
            granularity,
            gate: GateConfig {
                kind: self.gate,
                kernel: self.gate_kernel,
            },
            loss: self.loss,
            alpha: self.alpha,
            ..PatchConvMoeConfig::default()
        };
        let soft = (self.routing == "soft").then_some(SoftConvMoeConfig {
            num_experts: self.experts,
            slots_per_expert: self.slots_per_expert.unwrap_or(1),
            granularity,
            ..SoftConvMoeConfig::default()
        });
        self.moe
            .iter()
            .map(|path| {
                Ok(MoePlacement {
                    path: match path.as_str() {
                        "default" => self.seg_name()?.default_moe_path().to_string(),
                        other => other.to_string(),
                    },
                    config,
                    soft,
                })
            })
            .collect()
    }

    /// The segmentation network's name, or an error saying the ViTs are classifiers.
    fn seg_name(&self) -> Result<ModelName> {
        match self.model {
            CliModel::Seg(name) => Ok(name),
            CliModel::Dynamic(_) => Err(Error::invalid(
                "arguments",
                format!(
                    "{} is a dynamic routing network: --moe does not apply",
                    self.model
                ),
            )),
            CliModel::Vit(name) => Err(Error::invalid(
                "arguments",
                format!("{name} is an image classifier, not one of the segmentation networks"),
            )),
        }
    }

    /// The ViT configuration the flags describe (the factory's, with the flags applied).
    pub fn vit_config(&self, name: VitModelName) -> Result<VitConfig> {
        let mut config = name.config();
        config.num_classes = self.num_classes.unwrap_or(config.num_classes);
        if let Some(size) = self.img_size {
            config.img_size = [size, size];
        }
        let moe_flags = self.num_experts.is_some()
            || self.slots_per_expert.is_some()
            || self.moe_layer_index.is_some();
        match config.moe.as_mut() {
            Some(moe) => {
                moe.num_experts = self.num_experts.unwrap_or(moe.num_experts);
                moe.slots_per_expert = self.slots_per_expert.unwrap_or(moe.slots_per_expert);
                if let Some(text) = &self.moe_layer_index {
                    moe.layers = MoeLayers::parse(text)?;
                }
            }
            None if moe_flags => {
                return Err(Error::invalid(
                    "arguments",
                    format!(
                        "--num-experts, --slots-per-expert and --moe-layer-index apply to \
                         soft_moe_vit_*, not {name}"
                    ),
                ))
            }
            None => {}
        }
        Ok(config)
    }

    /// Builds the model (segmentation network with its MoE layers, or ViT) as a module.
    pub fn build_module(&self) -> Result<(Box<dyn Module>, Vec<MoePlacement>)> {
        match self.model {
            CliModel::Seg(_) | CliModel::Dynamic(_) => {
                let (net, placements) = self.build()?;
                Ok((net, placements))
            }
            CliModel::Vit(name) => {
                if !self.moe.is_empty() {
                    return Err(Error::invalid(
                        "arguments",
                        "--moe places PatchConvMoE layers in the segmentation networks; the \
                         Soft-MoE ViT takes --num-experts / --slots-per-expert / \
                         --moe-layer-index",
                    ));
                }
                let vit = VisionTransformer::new(self.vit_config(name)?)?;
                Ok((Box::new(vit), Vec::new()))
            }
        }
    }

    /// Builds the network with its MoE layers.
    pub fn build(&self) -> Result<(Box<dyn SegNet>, Vec<MoePlacement>)> {
        if let Some(config) = self.dynamic_config() {
            if !self.moe.is_empty() {
                self.seg_name()?;
            }
            return Ok((Box::new(DynamicNet4Seg::new(config)?), Vec::new()));
        }
        let name = self.seg_name()?;
        let config = ModelConfig {
            num_classes: self.num_classes.unwrap_or(19),
            backbone_depth: self.backbone_depth,
            pspnet_dilation: self.pspnet_dilation,
        };
        let mut net = build(name, &config)?;
        let placements = self.placements()?;
        place_moe(net.as_mut(), &placements)?;
        Ok((net, placements))
    }

    /// The dynamic network's configuration (`None` for the other models).
    pub fn dynamic_config(&self) -> Option<DynamicConfig> {
        match self.model {
            CliModel::Dynamic(layers) => Some(DynamicConfig {
                layers,
                ..DynamicConfig::layer16(self.num_classes.unwrap_or(19))
            }),
            _ => None,
        }
    }

    /// `--num-classes`, else the model's default (19, or 1000 for the ViTs).
    pub fn resolved_num_classes(&self) -> usize {
        match self.model {
            CliModel::Seg(_) | CliModel::Dynamic(_) => self.num_classes.unwrap_or(19),
            CliModel::Vit(name) => self.num_classes.unwrap_or(name.config().num_classes),
        }
    }

    /// `enet`, `enet-moe (regular5_1.ext_conv2.0, E=8 k=2 g=3 2conv_gap)` or
    /// `soft_moe_vit_tiny (224x224, patch 16, 128 experts x 1 slot in blocks From(6))`.
    fn title(&self, placements: &[MoePlacement]) -> String {
        if let CliModel::Vit(name) = self.model {
            let Ok(config) = self.vit_config(name) else {
                return name.to_string();
            };
            let [h, w] = config.img_size;
            let moe = config.moe.map(|m| {
                format!(
                    ", {} experts x {} slot(s) in blocks {:?}",
                    m.num_experts, m.slots_per_expert, m.layers
                )
            });
            return format!(
                "{name} ({h}x{w}, patch {}{})",
                config.patch_size,
                moe.unwrap_or_default()
            );
        }
        if placements.is_empty() {
            return self.model.to_string();
        }
        let parts: Vec<String> = placements.iter().map(MoePlacement::describe).collect();
        format!("{}-moe ({})", self.model, parts.join("; "))
    }
}

/// Parses `HxW` (also `H,W`) into `[H, W]`.
pub fn parse_size(flag: &str, text: &str) -> Result<[usize; 2]> {
    let parts: Vec<&str> = text.split(['x', 'X', ',']).collect();
    match parts.as_slice() {
        [h, w] => match (h.trim().parse::<usize>(), w.trim().parse::<usize>()) {
            (Ok(h), Ok(w)) if h > 0 && w > 0 => Ok([h, w]),
            _ => Err(Error::invalid(
                "arguments",
                format!("{flag} `{text}`: expected two positive integers like 512x1024"),
            )),
        },
        _ => Err(Error::invalid(
            "arguments",
            format!("{flag} `{text}`: expected HxW, e.g. 512x1024"),
        )),
    }
}

/// Options of `moeseg inspect`.
#[derive(Args, Debug, Clone)]
pub struct InspectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// The manifest text of a network: `key<TAB>[shape]<TAB>dtype` in state-dict order, then the
/// counts (the format of `../shared/manifests/<net>.tsv`).
pub fn manifest(args: &ModelArgs) -> Result<String> {
    let (net, placements) = args.build_module()?;
    let order =
        match args.model {
            CliModel::Dynamic(layers) => {
                format!(
            "state_dict order of the original DynamicNet4Seg, config {}; the Dynamic-A/B/C \
             configs have the same keys",
            if layers == 16 { "Seg.Layer16" } else { "Seg.Layer33.ImageNet" }
        )
            }
            _ => "state_dict order".to_string(),
        };
    let mut out = format!(
        "# {}  num_classes={}  ({order})\n# key\tshape\tdtype\n",
        args.title(&placements),
        args.resolved_num_classes()
    );
    let (mut parameters, mut buffers) = (0, 0);
    for (name, tensor, role) in named_tensors(net.as_ref()) {
        let dtype = match role {
            Role::Parameter => {
                parameters += 1;
                DType::F32
            }
            Role::Buffer(dtype) => {
                buffers += 1;
                dtype
            }
        };
        let dims: Vec<String> = tensor.dims().iter().map(usize::to_string).collect();
        out.push_str(&format!(
            "{name}\t[{}]\t{}\n",
            dims.join(","),
            torch_dtype(dtype)
        ));
    }
    let counts = parameter_counts(net.as_ref());
    if let CliModel::Dynamic(_) = args.model {
        // The original's manifests end with the keys.
        return Ok(out);
    }
    out.push_str(&format!(
        "# entries {} (parameters {parameters}, buffers {buffers})\n",
        parameters + buffers
    ));
    out.push_str(&format!("# total_params {}\n", counts.0));
    out.push_str(&format!("# trainable_params {}\n", counts.0));
    if !placements.is_empty() {
        out.push_str(&format!(
            "# active_params {}  (k of E experts counted)\n",
            counts.1
        ));
    }
    Ok(out)
}

/// PyTorch's name of a dtype (`float32`, `int64`).
fn torch_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "float32",
        DType::F16 => "float16",
        DType::BF16 => "bfloat16",
        DType::I64 => "int64",
    }
}

/// Runs `moeseg inspect`: the manifest on stdout (byte for byte the spec's format) and, for
/// PSPNet, which backbone dilation rule is in use and how to switch it on stderr.
pub fn run_inspect(args: &InspectArgs) -> Result<()> {
    print!("{}", manifest(&args.model)?);
    if args.model.model == CliModel::Seg(ModelName::Pspnet) {
        eprintln!("# {}", args.model.pspnet_dilation.describe());
    }
    Ok(())
}

/// Options of `moeseg flops`.
#[derive(Args, Debug, Clone)]
pub struct FlopsArgs {
    /// An ensemble run folder (`moeseg ensemble train`): the experts', the gate's, the dense and
    /// the top-k MACs per image at the run's evaluation size (as `moeseg ensemble flops`).
    #[arg(long, value_name = "RUN_DIR", conflicts_with_all = ["model", "size", "batch"])]
    pub run: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub model: Option<ModelArgs>,
    /// Input size `HxW`.
    #[arg(long, default_value = "512x1024")]
    pub size: String,
    /// Batch size of the counted forward.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
}

/// Runs `moeseg flops`: parameters (total, active) and MACs as exact integers, for the network
/// without and (when `--moe` is given) with its MoE layers.
pub fn run_flops(args: &FlopsArgs) -> Result<()> {
    let model = match (&args.run, &args.model) {
        (Some(run), _) => return super::ensemble::flops_of_run(run, &[], &None),
        (None, Some(model)) => model,
        (None, None) => {
            return Err(Error::invalid(
                "flops",
                "give --model NAME (a network) or --run RUN_DIR (an ensemble run)",
            ))
        }
    };
    if let Some(config) = model.dynamic_config() {
        return print_dynamic_flops(config, parse_size("--size", &args.size)?);
    }
    if let CliModel::Vit(name) = model.model {
        // A ViT's input size is its `--img-size` (the positional embedding follows it).
        let [h, w] = model.vit_config(name)?.img_size;
        let (net, _) = model.build_module()?;
        let counts = complexity(net.as_ref(), [args.batch, 3, h, w])?;
        println!(
            "{name} at {}x3x{h}x{w} (Linear, Conv2d and matmul MACs: attention and soft-routing \
             products included, eval mode)",
            args.batch
        );
        print_counts(&name.to_string(), &counts);
        return Ok(());
    }
    let [h, w] = parse_size("--size", &args.size)?;
    let input = [args.batch, 3, h, w];
    let baseline_args = ModelArgs {
        moe: Vec::new(),
        ..model.clone()
    };
    let (baseline_net, _) = baseline_args.build()?;
    let baseline = complexity(baseline_net.as_ref(), input)?;
    drop(baseline_net);
    println!(
        "{} at {}x3x{h}x{w} (Conv2d, ConvTranspose2d, Linear and routed expert MACs, eval mode)",
        model.model, args.batch
    );
    print_counts("baseline", &baseline);
    if !model.moe.is_empty() {
        let (net, placements) = model.build()?;
        let moe = complexity(net.as_ref(), input)?;
        print_counts(&model.title(&placements), &moe);
        let percent = |new: u64, old: u64| 100.0 * (new as f64 - old as f64) / old as f64;
        println!(
            "increase: active params {:+.3} %, MACs {:+.3} %",
            percent(moe.active_params, baseline.total_params),
            percent(moe.macs, baseline.macs)
        );
    }
    Ok(())
}

/// `moeseg flops` of a dynamic routing network: the full routing space's cost by parts (the
/// original's analytic counts, every node and path on, batch 1), its total and the
/// expected-FLOPs normaliser of the budget loss.
fn print_dynamic_flops(config: DynamicConfig, [h, w]: [usize; 2]) -> Result<()> {
    let layers = config.layers;
    let net = DynamicNet4Seg::new(config)?;
    let [ph, pw] = crate::models::dynamic::network::padded([h, w]);
    println!(
        "dynamic{layers} at 1x3x{h}x{w} (padded to {ph}x{pw}; the original's analytic counts, MFLOPs, \
         every path on)"
    );
    let parts = net.full_space_flops([h, w]);
    for (part, mflops) in &parts {
        println!("  {part:<11} {mflops:>12.1}");
    }
    let total: f64 = parts.iter().map(|p| p.1).sum();
    println!("full_space_gflops={:.3}", total / 1e3);
    println!(
        "budget_normaliser_mflops={:.1}  (expected FLOPs with every α = 1: cell ops and the paths \
         the nodes receive; model.dynamic.budget.flops_all = 0 uses it, the original's Dynamic-A \
         sets FLOPS_ALL = 26300)",
        net.full_space_expected([h, w])
    );
    Ok(())
}

fn print_counts(title: &str, counts: &Complexity) {
    println!("{title}");
    println!("  params_total  {}", counts.total_params);
    println!("  params_active {}", counts.active_params);
    println!("  macs          {}  ({:.2} G)", counts.macs, counts.gmacs());
}

/// Options of `moeseg forward`.
#[derive(Args, Debug, Clone)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Weights (safetensors, the network's state dict; loaded strictly).
    #[arg(long)]
    pub weights: PathBuf,
    /// Input file with tensor `input` `[B, 3, H, W]` f32.
    #[arg(long)]
    pub input: PathBuf,
    /// Output file: tensor `output` `[B, C, H, W]` f32 (logits; `[B, num_classes]` for the
    /// ViTs).
    #[arg(long)]
    pub output: PathBuf,
    /// Train mode: batch statistics, loss and gradients (needs --target and --grads).
    #[arg(long, requires_all = ["target", "grads"])]
    pub train: bool,
    /// Target file with tensor `target` `[B, H, W]` (int64 or float; 255 = ignore), or `[B]`
    /// class indices for the ViTs.
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// Dropout probability of every dropout layer in train mode (0 for a deterministic check).
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Gradients file: tensor `loss`, every parameter's gradient under its own name and the
    /// updated buffers as `buffers.<name>`.
    #[arg(long)]
    pub grads: Option<PathBuf>,
    /// Device: cpu, auto (CUDA when usable, else the CPU), cuda, cuda:N, or cuda-emu[:N] (the
    /// CUDA kernels emulated on the CPU).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// Runs `moeseg forward`.
pub fn run_forward(args: &ForwardArgs) -> Result<()> {
    let (device, note) = crate::train::setup::resolve_device(&args.device)?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    if let CliModel::Vit(_) = args.model.model {
        return run_vit_forward(args, &device);
    }
    let (net, _) = args.model.build()?;
    load_state_dict(net.as_ref(), &args.weights, LoadOptions::default())?;
    crate::nn::to_device(net.as_ref(), &device)?;
    let input = read_tensor(&args.input, "input")?.to_device(&device)?;
    input.expect_rank("moeseg forward", "input", 4)?;
    if !args.train {
        set_training(net.as_ref(), false);
        let logits = crate::autograd::no_grad(|| net.forward(&input))?;
        return save(&args.output, [("output", &logits, DType::F32)]);
    }
    let (Some(target_path), Some(grads_path)) = (&args.target, &args.grads) else {
        return Err(Error::invalid(
            "moeseg forward",
            "--train needs --target and --grads",
        ));
    };
    set_training(net.as_ref(), true);
    if let Some(p) = args.dropout {
        crate::nn::set_dropout_probability(net.as_ref(), p)?;
    }
    let target = read_tensor(target_path, "target")?.to_device(&device)?;
    let output = net.forward_seg(&input)?;
    let loss = training_loss(net.as_ref(), &output, &target, None)?.total;
    loss.backward()?;
    save(&args.output, [("output", &output.logits, DType::F32)])?;
    save_gradients(grads_path, net.as_ref(), loss)
}

/// `moeseg forward` of a ViT: logits `[B, num_classes]`; with `--train`, the mean
/// cross-entropy against class indices `target` `[B]` and its gradients.
fn run_vit_forward(args: &ForwardArgs, device: &crate::backend::Device) -> Result<()> {
    let (net, _) = args.model.build_module()?;
    load_state_dict(net.as_ref(), &args.weights, LoadOptions::default())?;
    crate::nn::to_device(net.as_ref(), device)?;
    let input = read_tensor(&args.input, "input")?.to_device(device)?;
    input.expect_rank("moeseg forward", "input", 4)?;
    set_training(net.as_ref(), args.train);
    let (Some(target_path), Some(grads_path), true) = (&args.target, &args.grads, args.train)
    else {
        let logits = crate::autograd::no_grad(|| net.forward(&input))?;
        return save(&args.output, [("output", &logits, DType::F32)]);
    };
    let target = read_tensor(target_path, "target")?.to_device(device)?;
    let logits = net.forward(&input)?;
    let loss = logits.cross_entropy(&target, Default::default())?;
    loss.backward()?;
    save(&args.output, [("output", &logits, DType::F32)])?;
    save_gradients(grads_path, net.as_ref(), loss)
}

/// Writes `loss`, every parameter's gradient under its name and every buffer as
/// `buffers.<name>`.
fn save_gradients(path: &std::path::Path, net: &dyn Module, loss: Tensor) -> Result<()> {
    let mut entries: Vec<(String, Tensor, DType)> = vec![("loss".to_string(), loss, DType::F32)];
    for (name, tensor, role) in named_tensors(net) {
        match role {
            Role::Parameter => {
                // A parameter the forward does not use (ERFNet's encoder.output_conv) has a
                // zero gradient here where PyTorch has None.
                let grad = match tensor.grad() {
                    Some(g) => g,
                    None => tensor.zeros_like()?,
                };
                entries.push((name, grad, DType::F32));
            }
            Role::Buffer(dtype) => entries.push((format!("buffers.{name}"), tensor, dtype)),
        }
    }
    save(path, entries.iter().map(|(n, t, d)| (n.as_str(), t, *d)))
}

/// Reads tensor `name` of a safetensors file, with an error naming both when it is absent.
fn read_tensor(path: &std::path::Path, name: &str) -> Result<Tensor> {
    let file = SafetensorsFile::open(path)?;
    if !file.contains(name) {
        return Err(Error::file(
            path,
            format!(
                "has no tensor `{name}` (it holds: {})",
                file.names().join(", ")
            ),
        ));
    }
    file.tensor(name)
}
