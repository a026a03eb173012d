//! The routing space (`DynamicNetwork`), its decoder head (`SemSegDecoderHead`) and the whole
//! `DynamicNet4Seg`, whose forward also yields the expected and the real FLOPs per image.

use super::cell::{Branch, Cell, Direction, NodeOutput};
use super::layers::{kaiming_conv, ConvNorm, Stem, BILINEAR};
use super::{cells_per_layer, flops, skip, DynamicConfig, InputConvention, PIXEL_MEAN_BGR};
use crate::autograd::no_grad;
use crate::data::{IMAGENET_MEAN, IMAGENET_STD};
use crate::error::{Error, Result};
use crate::models::SegNet;
use crate::nn::{set_training, Conv2d, ConvOptions, Module, TrainingFlag};
use crate::ops::interpolate::Resize;
use crate::tensor::Tensor;
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The input sizes must divide by this (`MAX_STRIDE`); other sizes are zero-padded at the
/// bottom and right, as the original's `ImageList`, and the logits cropped back.
pub const MAX_STRIDE: usize = 32;

/// Modules held by index (`nn.ModuleList` of one type): children `0`, `1`, ….
pub struct Indexed<T: Module>(pub Vec<T>);

impl<T: Module> Module for Indexed<T> {
    fn type_name(&self) -> &'static str {
        "ModuleList"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Err(Error::invalid(
            "ModuleList",
            format!("has no forward of its own (input {})", input.shape()),
        ))
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.0
            .iter()
            .enumerate()
            .map(|(i, m)| (i.to_string(), m as &dyn Module))
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Which branches of layer i−1 node j receives, as the original's
/// `[from j−1 (down), keep, from j+1 (up)]` (`all_cell_type_list[i][j]`).
pub fn incoming(layer: usize, cell: usize, cells: usize) -> [bool; 3] {
    let from_finer = cell > 0;
    let keep = !(layer <= 2 && cell + 1 == cells);
    let from_coarser = if layer > 2 {
        cell + 1 < cells
    } else {
        cell + 2 < cells
    };
    [from_finer, keep, from_coarser]
}

/// The (sender index, direction) of every branch node `cell` of `layer` receives.
pub fn senders(layer: usize, cell: usize, cells: usize) -> Vec<(usize, Direction)> {
    let [finer, keep, coarser] = incoming(layer, cell, cells);
    let mut out = Vec::new();
    if finer {
        out.push((cell - 1, Direction::Down));
    }
    if keep {
        out.push((cell, Direction::Keep));
    }
    if coarser {
        out.push((cell + 1, Direction::Up));
    }
    out
}

/// The α of one node for the batch, detached.
#[derive(Clone)]
pub struct NodeAlphas {
    /// Layer index (`None` for `init_layer`).
    pub layer: Option<usize>,
    /// Scale j (stride 4·2^j).
    pub scale: usize,
    /// `[B, gates]`.
    pub alphas: Tensor,
    /// The direction of each gate column.
    pub directions: Vec<Direction>,
}

/// What the backbone returns: the last layer's keep outputs and the FLOP figures.
pub struct BackboneOutput {
    /// `layer_0..layer_3`.
    pub features: Vec<Tensor>,
    /// `[B]` expected FLOPs of the cells (MFLOPs, differentiable).
    pub expected: Tensor,
    /// `[B]` real FLOPs of the cells, their gates and the stem (MFLOPs, no gradient).
    pub real: Tensor,
    /// α of every node, `init_layer` first.
    pub alphas: Vec<NodeAlphas>,
}

/// The FLOP figures and routes of the latest forward.
#[derive(Clone)]
pub struct RouteRecord {
    /// `[B]` expected FLOPs (MFLOPs): α-weighted cells and transforms, as the budget loss uses.
    pub expected: Tensor,
    /// Real FLOPs per image (MFLOPs): what ran, plus gates, stem and head.
    pub real: Vec<f64>,
    /// α of every node, `init_layer` first.
    pub alphas: Vec<NodeAlphas>,
    /// Whether the forward skipped paths (eval mode with skipping on).
    pub skipped: bool,
}

/// `DynamicNetwork`: `stem`, `all_cell_list.<i>.<j>`, `init_layer` (the state-dict order).
pub struct Backbone {
    /// The stride-4 stem.
    pub stem: Stem,
    /// Layers of nodes.
    pub all_cell_list: Indexed<Indexed<Cell>>,
    /// The node between the stem and layer 0 (keep and down).
    pub init_layer: Cell,
    /// Channels at stride 4.
    pub channels: usize,
}

impl Backbone {
    /// The routing space of `config`, freshly initialised.
    pub fn new(config: &DynamicConfig) -> Result<Self> {
        let c = config.channels;
        let layers = config.layers;
        let mut all = Vec::with_capacity(layers);
        for (i, &cells) in cells_per_layer(layers).iter().enumerate() {
            let last = i + 1 == layers;
            let row = (0..cells)
                .map(|j| {
                    Cell::new(
                        c << j,
                        j > 0 && !last,
                        j != 3 && !last,
                        config.gate_bias,
                        config.small_gate,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            all.push(Indexed(row));
        }
        Ok(Backbone {
            stem: Stem::new(c)?,
            all_cell_list: Indexed(all),
            init_layer: Cell::new(c, false, true, config.gate_bias, config.small_gate)?,
            channels: c,
        })
    }

    /// Nodes of layer `i`.
    pub fn layer(&self, i: usize) -> &[Cell] {
        &self.all_cell_list.0[i].0
    }

    /// Number of layers.
    pub fn layers(&self) -> usize {
        self.all_cell_list.0.len()
    }

    /// The α record of a node.
    pub fn node_alphas(
        cell: &Cell,
        layer: Option<usize>,
        scale: usize,
        alphas: &Tensor,
    ) -> NodeAlphas {
        let mut directions = vec![Direction::Keep];
        if cell.res_up.is_some() {
            directions.push(Direction::Up);
        }
        if cell.res_down.is_some() {
            directions.push(Direction::Down);
        }
        NodeAlphas {
            layer,
            scale,
            alphas: alphas.detach(),
            directions,
        }
    }

    /// The dense forward of the original: every node and path computed for every image.
    pub fn forward_dense(&self, input: &Tensor) -> Result<BackboneOutput> {
        let x = self.stem.forward(input)?;
        let stem_flops = flops::stem([input.dims()[2], input.dims()[3]], self.channels) as f32;
        let init = self.init_layer.forward_dense(&x)?;
        let mut alphas = vec![Self::node_alphas(&self.init_layer, None, 0, &init.alphas)];
        let mut previous: Vec<NodeOutput> = vec![init];
        let mut expected: Option<Tensor> = None;
        let mut real: Option<Tensor> = None;
        let accumulate = |sum: &mut Option<Tensor>, t: &Tensor| -> Result<()> {
            *sum = Some(match sum.take() {
                Some(s) => s.add(t)?,
                None => t.clone(),
            });
            Ok(())
        };
        for i in 0..self.layers() {
            let cells = self.layer(i);
            let mut outputs = Vec::with_capacity(cells.len());
            for (j, cell) in cells.iter().enumerate() {
                let branches: Vec<&Branch> = senders(i, j, cells.len())
                    .into_iter()
                    .map(|(from, direction)| pick(&previous, from, direction, i, j))
                    .collect::<Result<_>>()?;
                let sum_of = |f: fn(&Branch) -> &Tensor| -> Result<Tensor> {
                    let mut total = f(branches[0]).clone();
                    for b in &branches[1..] {
                        total = total.add(f(b))?;
                    }
                    Ok(total)
                };
                if branches.is_empty() {
                    return Err(Error::invalid(
                        "dynamic",
                        format!("node {i}.{j} has no input"),
                    ));
                }
                let h = sum_of(|b| &b.value)?;
                let out = cell.forward_dense(&h)?;
                accumulate(
                    &mut expected,
                    &out.op_expected.add(&sum_of(|b| &b.expected)?)?,
                )?;
                let node_real = no_grad(|| out.op_real.add(&sum_of(|b| &b.real)?))?;
                accumulate(&mut real, &node_real)?;
                alphas.push(Self::node_alphas(cell, Some(i), j, &out.alphas));
                outputs.push(out);
            }
            previous = outputs;
        }
        let features = previous.into_iter().map(|o| o.keep.value).collect();
        let (Some(expected), Some(real)) = (expected, real) else {
            return Err(Error::invalid("dynamic", "the routing space has no layers"));
        };
        let real = no_grad(|| real.add_scalar(stem_flops))?;
        Ok(BackboneOutput {
            features,
            expected,
            real,
            alphas,
        })
    }
}

/// The `direction` branch of node `from` of the previous layer, or an error naming the
/// receiving node.
fn pick(
    previous: &[NodeOutput],
    from: usize,
    direction: Direction,
    i: usize,
    j: usize,
) -> Result<&Branch> {
    let node = previous.get(from);
    let branch = node.and_then(|n| match direction {
        Direction::Keep => Some(&n.keep),
        Direction::Up => n.up.as_ref(),
        Direction::Down => n.down.as_ref(),
    });
    branch.ok_or_else(|| {
        Error::invalid(
            "dynamic",
            format!("node {i}.{j} expects the {direction:?} branch of node {from} of the previous layer"),
        )
    })
}

/// Impl for Backbone's Module.
impl Module for Backbone {
    fn type_name(&self) -> &'static str {
        "DynamicNetwork"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let out = self.forward_dense(input)?;
        out.features
            .into_iter()
            .next()
            .ok_or_else(|| Error::invalid("dynamic", "no features"))
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("stem".to_string(), &self.stem as &dyn Module),
            ("all_cell_list".to_string(), &self.all_cell_list),
            ("init_layer".to_string(), &self.init_layer),
        ]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `SemSegDecoderHead`: 1×1 conv-BN-ReLU per scale, top-down sum and ×2, the 3×3 predictor
/// (with bias) and bilinear ×4.
pub struct Head {
    /// `layer_decoder_list.k`: C·2^k → C (k = 0) or C·2^(k−1).
    pub layer_decoder_list: Indexed<ConvNorm>,
    /// `predictor`: 3×3, pad 1, C → classes, with bias (initialised 0).
    pub predictor: Conv2d,
    /// Channels at stride 4.
    pub channels: usize,
}

impl Head {
    /// The head of `config`.
    pub fn new(config: &DynamicConfig) -> Result<Self> {
        let c = config.channels;
        let decoders = (0..4)
            .map(|k| {
                let c_in = c << k;
                ConvNorm::pointwise(c_in, if k == 0 { c_in } else { c_in / 2 }, 1, true)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Head {
            layer_decoder_list: Indexed(decoders),
            predictor: kaiming_conv(c, config.num_classes, 3, ConvOptions::new().padding(1), 0.0)?,
            channels: c,
        })
    }

    /// Logits at 4× the finest feature's size.
    pub fn forward_features(&self, features: &[Tensor]) -> Result<Tensor> {
        let decoders = &self.layer_decoder_list.0;
        if features.len() != decoders.len() {
            return Err(Error::invalid(
                "dynamic head",
                format!(
                    "{} features for {} decoder levels",
                    features.len(),
                    decoders.len()
                ),
            ));
        }
        let mut p: Option<Tensor> = None;
        for k in (0..decoders.len()).rev() {
            let x = match &p {
                Some(prev) => features[k].add(prev)?,
                None => features[k].clone(),
            };
            let y = decoders[k].forward(&x)?;
            p = Some(if k > 0 {
                y.interpolate(Resize::Scale([2.0, 2.0]), BILINEAR)?
            } else {
                y
            });
        }
        let p = p.ok_or_else(|| Error::invalid("dynamic head", "no levels"))?;
        self.predictor
            .forward(&p)?
            .interpolate(Resize::Scale([4.0, 4.0]), BILINEAR)
    }

    /// Head FLOPs for features at `hw[k]`.
    pub fn flops(&self, hw: &[[usize; 2]]) -> f64 {
        flops::head(hw, self.channels, self.predictor.out_channels())
    }
}

impl Module for Head {
    fn type_name(&self) -> &'static str {
        "SemSegDecoderHead"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Err(Error::invalid(
            "SemSegDecoderHead",
            format!(
                "takes the four backbone features, not one input {}",
                input.shape()
            ),
        ))
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            (
                "layer_decoder_list".to_string(),
                &self.layer_decoder_list as &dyn Module,
            ),
            ("predictor".to_string(), &self.predictor),
        ]
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `DynamicNet4Seg`: `backbone` and `sem_seg_head`. Its forward maps `[B, 3, H, W]` to logits
/// `[B, classes, H, W]` and records the FLOP figures and α of the batch ([`RouteRecord`]).
pub struct DynamicNet4Seg {
    /// The routing space.
    pub backbone: Backbone,
    /// The decoder head.
    pub sem_seg_head: Head,
    /// The configuration it was built from.
    pub config: DynamicConfig,
    /// In eval mode, compute each path only for the images whose α > 0 (default on).
    pub skip_in_eval: AtomicBool,
    /// What the stem sees (the input is ImageNet-normalised RGB either way).
    pub input_convention: InputConvention,
    training: TrainingFlag,
    last: Mutex<Option<RouteRecord>>,
}

impl DynamicNet4Seg {
    /// A freshly initialised network (Kaiming-normal convs, gate biases `gate_bias`).
    pub fn new(config: DynamicConfig) -> Result<Self> {
        config.validate()?;
        Ok(DynamicNet4Seg {
            backbone: Backbone::new(&config)?,
            sem_seg_head: Head::new(&config)?,
            config,
            skip_in_eval: AtomicBool::new(true),
            input_convention: InputConvention::Imagenet,
            training: TrainingFlag::default(),
            last: Mutex::new(None),
        })
    }

    /// Turns per-image path skipping in eval mode on or off (off: the dense forward).
    pub fn set_skip_in_eval(&self, on: bool) {
        self.skip_in_eval.store(on, Ordering::Relaxed);
    }

    /// Whether the net is in training mode.
    pub fn is_training(&self) -> bool {
        self.training.get()
    }

    /// The FLOP figures and α of the latest forward.
    pub fn last_record(&self) -> Option<RouteRecord> {
        self.last.lock().ok().and_then(|r| r.clone())
    }

    /// Real FLOPs of the full routing space (every node and path on, batch 1) at input `hw`,
    /// by parts: `[(part, MFLOPs)]` for stem, cells, gates, transforms and head.
    pub fn full_space_flops(&self, hw: [usize; 2]) -> Vec<(&'static str, f64)> {
        let hw = padded(hw);
        let c = self.config.channels;
        let base = [hw[0] / 4, hw[1] / 4];
        let at = |j: usize| [base[0] >> j, base[1] >> j];
        let (mut cells, mut gates, mut transforms) = (0.0, 0.0, 0.0);
        let mut init_transforms = 0.0;
        for direction in [Direction::Keep, Direction::Down] {
            init_transforms += self.backbone.init_layer.transform_flops(direction, base);
        }
        for i in 0..self.backbone.layers() {
            for (j, cell) in self.backbone.layer(i).iter().enumerate() {
                cells += cell.op_flops(at(j));
                gates += cell.gate_flops(at(j));
                for direction in [Direction::Up, Direction::Keep, Direction::Down] {
                    if cell.gate_index(direction).is_some() {
                        transforms += cell.transform_flops(direction, at(j));
                    }
                }
            }
        }
        let head_hw: Vec<[usize; 2]> = (0..4).map(at).collect();
        vec![
            ("stem", flops::stem(hw, c)),
            ("cells", cells),
            ("gates", gates),
            ("transforms", transforms + init_transforms),
            ("head", self.sem_seg_head.flops(&head_hw)),
        ]
    }

    /// The expected FLOPs (MFLOPs, batch 1) with every α = 1 at input `hw`: every cell op plus
    /// every path a node receives, the quantity the budget loss divides by `flops_all`.
    pub fn full_space_expected(&self, hw: [usize; 2]) -> f64 {
        let hw = padded(hw);
        let base = [hw[0] / 4, hw[1] / 4];
        let at = |j: usize| [base[0] >> j, base[1] >> j];
        let mut total = 0.0;
        for i in 0..self.backbone.layers() {
            let cells = self.backbone.layer(i);
            for (j, cell) in cells.iter().enumerate() {
                total += cell.op_flops(at(j));
                for (from, direction) in senders(i, j, cells.len()) {
                    let sender = if i == 0 {
                        &self.backbone.init_layer
                    } else {
                        &self.backbone.layer(i - 1)[from]
                    };
                    total += sender.transform_flops(direction, at(from));
                }
            }
        }
        total
    }

    /// The routed forward: logits, and the record of FLOPs and α (also kept for
    /// [`DynamicNet4Seg::last_record`]).
    pub fn forward_routed(&self, input: &Tensor) -> Result<(Tensor, RouteRecord)> {
        input.expect_rank("DynamicNet4Seg", "input", 4)?;
        let dims = input.dims().to_vec();
        if dims[1] != 3 {
            return Err(Error::shape(
                "DynamicNet4Seg",
                format!("input {}: expected 3 channels", input.shape()),
            ));
        }
        let [ph, pw] = padded([dims[2], dims[3]]);
        let x = self.convert_input(input)?;
        let x = if [ph, pw] == [dims[2], dims[3]] {
            x
        } else {
            x.pad(&[0, pw - dims[3], 0, ph - dims[2]], 0.0)?
        };
        let skipped = !self.is_training() && self.skip_in_eval.load(Ordering::Relaxed);
        let out = if skipped {
            skip::forward_sparse(&self.backbone, &x)?
        } else {
            self.backbone.forward_dense(&x)?
        };
        let hw: Vec<[usize; 2]> = out
            .features
            .iter()
            .map(|f| [f.dims()[2], f.dims()[3]])
            .collect();
        let head_flops = self.sem_seg_head.flops(&hw);
        let mut logits = self.sem_seg_head.forward_features(&out.features)?;
        if [ph, pw] != [dims[2], dims[3]] {
            logits = logits.narrow(2, 0, dims[2])?.narrow(3, 0, dims[3])?;
        }
        let real = out
            .real
            .try_to_vec()?
            .into_iter()
            .map(|v| v as f64 + head_flops)
            .collect();
        let record = RouteRecord {
            expected: out.expected,
            real,
            alphas: out.alphas,
            skipped,
        };
        if let Ok(mut last) = self.last.lock() {
            *last = Some(record.clone());
        }
        Ok((logits, record))
    }
}

impl DynamicNet4Seg {
    /// The input in the stem's convention: as given, or ImageNet-normalised RGB turned into
    /// BGR 0–255 minus `PIXEL_MEAN`: channel o = (x[2−o]·std[2−o] + mean[2−o])·255 − mean_o.
    fn convert_input(&self, input: &Tensor) -> Result<Tensor> {
        if self.input_convention == InputConvention::Imagenet {
            return Ok(input.clone());
        }
        let device = input.device();
        let order = Tensor::from_vec_on(vec![2.0, 1.0, 0.0], [3], &device)?;
        let scale: Vec<f32> = (0..3).map(|o| IMAGENET_STD[2 - o] * 255.0).collect();
        let shift: Vec<f32> = (0..3)
            .map(|o| IMAGENET_MEAN[2 - o] * 255.0 - PIXEL_MEAN_BGR[o])
            .collect();
        input
            .index_select(1, &order)?
            .mul(&Tensor::from_vec_on(scale, [1, 3, 1, 1], &device)?)?
            .add(&Tensor::from_vec_on(shift, [1, 3, 1, 1], &device)?)
    }
}

/// `hw` rounded up to multiples of [`MAX_STRIDE`].
pub fn padded(hw: [usize; 2]) -> [usize; 2] {
    hw.map(|v| v.div_ceil(MAX_STRIDE) * MAX_STRIDE)
}

impl Module for DynamicNet4Seg {
    fn type_name(&self) -> &'static str {
        "DynamicNet4Seg"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        Ok(self.forward_routed(input)?.0)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("backbone".to_string(), &self.backbone as &dyn Module),
            ("sem_seg_head".to_string(), &self.sem_seg_head),
        ]
    }

    fn set_own_training(&self, training: bool) {
        self.training.set(training);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl SegNet for DynamicNet4Seg {}

/// The dynamic network inside `net`, if it is one.
pub fn dynamic_net(net: &dyn Module) -> Option<&DynamicNet4Seg> {
    net.as_any().downcast_ref::<DynamicNet4Seg>()
}

/// Puts a freshly built network in `training` mode (helper for tests and tools).
pub fn with_mode(net: DynamicNet4Seg, training: bool) -> DynamicNet4Seg {
    set_training(&net, training);
    net
}
