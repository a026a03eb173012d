//! PatchConvMoE (moe.md §1): a stride-1, size-preserving convolution replaced by E expert copies;
//! the feature map is cut into a grid of patches (tokens, with a halo of true neighbour pixels),
//! a gate routes each token to its top-k experts, and the weighted expert outputs are
//! reassembled. The same layer is the image-level ConvMoE with [`Granularity::Image`].

use crate::autograd::lock;
use crate::error::{Error, Result};
use crate::moe::RoutingStats;
use crate::moe::{capacity, noisy_selection, BalanceInputs, BalanceLoss, Gate, GateConfig};
use crate::nn::{
    get_module, init, replace_module, Conv2d, Module, ModuleList, OwnTensor, TrainingFlag,
};
use crate::ops::conv::Conv2dParams;
use crate::ops::patch_grid::PatchGrid;
use crate::ops::routed_conv::RoutedConvParams;
use crate::ops::topk_gate::TopkGateParams;
use crate::tensor::{with_default_rng, Tensor};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// How the feature map is cut into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    /// A g×g grid: patches of `ceil(H/g) × ceil(W/g)` pixels.
    Grid(usize),
    /// Patches of an explicit `[ph, pw]` size in pixels.
    PatchSize([usize; 2]),
    /// One token per image (image-level ConvMoE; the same as `Grid(1)`).
    Image,
}

/// How expert weights start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ExpertInit {
    /// Kaiming-normal (fan-in, gain √2); biases as the replaced conv's default.
    KaimingNormal,
    /// The replaced conv's weights (and bias) plus N(0, noise_std²) noise.
    Copy { noise_std: f32 },
}

/// Hyper-parameters of a PatchConvMoE layer (moe.md §1; defaults as there).
#[derive(Clone, Copy, Debug)]
pub struct PatchConvMoeConfig {
    /// Number of experts E.
    pub num_experts: usize,
    /// Experts per token k.
    pub k: usize,
    /// Token granularity.
    pub granularity: Granularity,
    /// Gate network.
    pub gate: GateConfig,
    /// Balancing loss.
    pub loss: BalanceLoss,
    /// Weight of the balancing loss.
    pub alpha: f32,
    /// Straight-through weights for k = 1 (forward 1, gradient through p).
    pub straight_through: bool,
    /// Noisy top-k in training when > 0.
    pub noise_std: f32,
    /// Per-expert capacity factor (`None`: no limit).
    pub capacity_factor: Option<f32>,
    /// An always-on shared expert added to the routed sum.
    pub shared_expert: bool,
    /// Expert initialisation.
    pub init: ExpertInit,
}

impl Default for PatchConvMoeConfig {
    fn default() -> Self {
        PatchConvMoeConfig {
            num_experts: 8,
            k: 2,
            granularity: Granularity::Grid(3),
            gate: GateConfig::default(),
            loss: BalanceLoss::Entropy,
            alpha: 1.0,
            straight_through: true,
            noise_std: 0.0,
            capacity_factor: None,
            shared_expert: false,
            init: ExpertInit::KaimingNormal,
        }
    }
}

/// What the last forward routed: the weighted balancing loss and the choices, for the training
/// loss and the routing statistics.
#[derive(Clone, Debug)]
pub struct RoutingRecord {
    /// `alpha · L_balance` (differentiable; a rank-0 tensor).
    pub balance_loss: Tensor,
    /// `[T, k]` chosen experts, rank order.
    pub indices: Tensor,
    /// The token grid of that forward.
    pub grid: PatchGrid,
}

/// The layer. State-dict keys: `experts.{e}.weight|bias`, `gate.network.…`,
/// `shared_expert.weight|bias` (PyTorch's registration order).
pub struct PatchConvMoE {
    /// The expert convs (each a copy of the replaced conv's geometry).
    pub experts: ModuleList,
    /// The gate network.
    pub gate: Gate,
    /// The optional shared expert.
    pub shared_expert: Option<Conv2d>,
    /// Hyper-parameters.
    pub config: PatchConvMoeConfig,
    conv_params: Conv2dParams,
    kernel: [usize; 2],
    fixed_expert: Mutex<Option<usize>>,
    last: Mutex<Option<RoutingRecord>>,
    training: TrainingFlag,
}

impl PatchConvMoE {
    /// A PatchConvMoE in place of `conv`, which must be stride 1 and size preserving
    /// (padding = dilation·(kernel − 1)/2 on each axis, odd kernels).
    pub fn from_conv(conv: &Conv2d, config: PatchConvMoeConfig) -> Result<Self> {
        let kernel = conv.kernel_size();
        let params = conv.params;
        size_preserving_halo(kernel, params)?;
        if config.num_experts == 0 || config.k == 0 || config.k > config.num_experts {
            return Err(Error::invalid(
                "PatchConvMoE",
                format!(
                    "need 1 ≤ k ≤ E, got k = {} with E = {}",
                    config.k, config.num_experts
                ),
            ));
        }
        let cin = conv.in_channels();
        let mut experts: Vec<Box<dyn Module>> = Vec::with_capacity(config.num_experts);
        for _ in 0..config.num_experts {
            experts.push(Box::new(expert_copy(conv, config.init)?));
        }
        let shared_expert = config
            .shared_expert
            .then(|| expert_copy(conv, config.init))
            .transpose()?;
        Ok(PatchConvMoE {
            experts: ModuleList::new(experts),
            gate: Gate::new(config.gate, cin, config.num_experts)?,
            shared_expert,
            config,
            conv_params: params,
            kernel,
            fixed_expert: Mutex::new(None),
            last: Mutex::new(None),
            training: TrainingFlag::default(),
        })
    }

    /// Sends every token to expert `e` with weight 1 (`Some(e)`), or back to normal routing.
    pub fn set_fixed_expert(&self, expert: Option<usize>) -> Result<()> {
        if let Some(e) = expert {
            if e >= self.config.num_experts {
                return Err(Error::invalid(
                    "PatchConvMoE",
                    format!(
                        "fixed expert {e} out of range for {} experts",
                        self.config.num_experts
                    ),
                ));
            }
        }
        *lock(&self.fixed_expert) = expert;
        Ok(())
    }

    /// The routing of the last forward (balancing loss and choices).
    pub fn last_routing(&self) -> Option<RoutingRecord> {
        lock(&self.last).clone()
    }

    /// Expert `e` as a plain conv (with the replaced conv's geometry), to replace the layer for
    /// good ("reduce to expert e"). The shared expert, if any, is not folded in.
    pub fn expert(&self, e: usize) -> Result<Conv2d> {
        let expert = self.expert_conv(e)?;
        Ok(Conv2d {
            weight: expert.weight.detach().with_requires_grad(true),
            bias: expert
                .bias
                .as_ref()
                .map(|b| b.detach().with_requires_grad(true)),
            params: expert.params,
        })
    }

    /// Parameters of the `E − k` experts a token does not use (the gap between the total and
    /// the *active* parameter count of the network summaries).
    pub fn inactive_parameter_count(&self) -> usize {
        let per_expert = self
            .experts
            .items
            .first()
            .map_or(0, |expert| crate::nn::parameter_count(expert.as_ref()));
        let unused = self.config.num_experts.saturating_sub(self.config.k);
        unused * per_expert
    }

    fn expert_conv(&self, e: usize) -> Result<&Conv2d> {
        conv_expert(&self.experts, "PatchConvMoE", e)
    }

    fn grid(&self, input: &Tensor) -> Result<PatchGrid> {
        token_grid(
            "PatchConvMoE",
            input,
            self.config.granularity,
            self.kernel,
            self.conv_params,
        )
    }
}

/// The token grid of `input` for a layer replacing a conv of `kernel` and `params` (moe.md
/// §1.1–1.2): the granularity's patches with the conv's halo.
pub(crate) fn token_grid(
    layer: &'static str,
    input: &Tensor,
    granularity: Granularity,
    kernel: [usize; 2],
    params: Conv2dParams,
) -> Result<PatchGrid> {
    input.expect_rank(layer, "input", 4)?;
    let d = input.dims();
    let halo = size_preserving_halo(kernel, params)?;
    match granularity {
        Granularity::Grid(g) => PatchGrid::from_grid(d[0], d[1], d[2], d[3], g, halo),
        Granularity::Image => PatchGrid::from_grid(d[0], d[1], d[2], d[3], 1, halo),
        Granularity::PatchSize(p) => PatchGrid::from_patch_size(d[0], d[1], d[2], d[3], p, halo),
    }
}

impl Module for PatchConvMoE {
    fn type_name(&self) -> &'static str {
        "PatchConvMoE"
    }

    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        let grid = self.grid(input)?;
        let tokens = input.patch_split(grid)?;
        let logits = self.gate.forward(&tokens)?;
        let (num_tokens, experts) = (grid.tokens(), self.config.num_experts);
        let fixed = *lock(&self.fixed_expert);
        let training = self.training.get();
        let selection = if training && self.config.noise_std > 0.0 && fixed.is_none() {
            let clean = crate::autograd::no_grad(|| logits.softmax(-1))?;
            Some(with_default_rng(|rng| {
                noisy_selection(&clean, self.config.noise_std, rng)
            })?)
        } else {
            None
        };
        let capacity = match self.config.capacity_factor {
            Some(factor) if fixed.is_none() => {
                capacity(self.config.k, num_tokens, experts, factor)?
            }
            _ => 0,
        };
        let params = TopkGateParams {
            k: self.config.k,
            straight_through: self.config.straight_through,
            capacity,
            eps: 1e-5,
        };
        let gate = logits.topk_gate(params, selection.as_ref())?;
        let (indices, weights) = match fixed {
            Some(e) => {
                let device = input.device();
                (
                    Tensor::full([num_tokens, 1], e as f32, &device)?,
                    Tensor::ones([num_tokens, 1], &device)?,
                )
            }
            None => (gate.indices.clone(), gate.weights.clone()),
        };
        let experts: Vec<&Conv2d> = (0..experts)
            .map(|e| self.expert_conv(e))
            .collect::<Result<_>>()?;
        let weights_refs: Vec<&Tensor> = experts.iter().map(|c| &c.weight).collect();
        let biases: Option<Vec<&Tensor>> = experts.iter().map(|c| c.bias.as_ref()).collect();
        let routed_params = RoutedConvParams {
            dilation: self.conv_params.dilation,
            groups: self.conv_params.groups,
        };
        let mut y = tokens.dispatch_routed_conv(
            &weights_refs,
            biases.as_deref(),
            &indices,
            &weights,
            routed_params,
        )?;
        if let Some(shared) = &self.shared_expert {
            let valid = Conv2dParams {
                padding: [0; 4],
                ..self.conv_params
            };
            y = y.add(&tokens.conv2d(&shared.weight, shared.bias.as_ref(), valid)?)?;
        }
        let output = y.patch_reassemble(grid)?;
        let balance = self.config.loss.compute(BalanceInputs {
            probs: &gate.probs,
            weights: &gate.weights,
            indices: &gate.indices,
        })?;
        *lock(&self.last) = Some(RoutingRecord {
            balance_loss: balance.mul_scalar(self.config.alpha)?,
            indices,
            grid,
        });
        Ok(output)
    }

    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut out: Vec<(String, &dyn Module)> = vec![
            ("experts".to_string(), &self.experts as &dyn Module),
            ("gate".to_string(), &self.gate as &dyn Module),
        ];
        if let Some(shared) = &self.shared_expert {
            out.push(("shared_expert".to_string(), shared as &dyn Module));
        }
        out
    }

    fn child_mut(&mut self, name: &str) -> Option<&mut dyn Module> {
        match name {
            "experts" => Some(&mut self.experts),
            "gate" => Some(&mut self.gate),
            "shared_expert" => self.shared_expert.as_mut().map(|m| m as &mut dyn Module),
            _ => None,
        }
    }

    fn own_tensors(&self) -> Vec<OwnTensor> {
        Vec::new()
    }

    fn set_own_training(&self, training: bool) {
        self.training.set(training);
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The halo `dilation·(kernel − 1)/2` per axis, checking the conv is stride 1 and keeps the
/// map size (odd kernel, symmetric padding equal to the halo).
pub(crate) fn size_preserving_halo(kernel: [usize; 2], params: Conv2dParams) -> Result<[usize; 2]> {
    let mut halo = [0; 2];
    for axis in 0..2 {
        let reach = params.dilation[axis] * (kernel[axis].saturating_sub(1));
        let (before, after) = (params.padding[2 * axis], params.padding[2 * axis + 1]);
        if params.stride[axis] != 1
            || !reach.is_multiple_of(2)
            || before != reach / 2
            || after != reach / 2
        {
            return Err(Error::invalid(
                "PatchConvMoE",
                format!(
                    "can only replace a stride-1, size-preserving conv (padding = dilation·(kernel−1)/2); \
                     got kernel {kernel:?}, stride {:?}, padding {:?} (top, bottom, left, right), dilation {:?}",
                    params.stride, params.padding, params.dilation
                ),
            ));
        }
        halo[axis] = reach / 2;
    }
    Ok(halo)
}

/// One expert: the replaced conv's geometry with fresh (kaiming-normal) or copied weights.
pub(crate) fn expert_copy(conv: &Conv2d, how: ExpertInit) -> Result<Conv2d> {
    let shape = conv.weight.shape().clone();
    let weight = match how {
        ExpertInit::KaimingNormal => init::kaiming_normal(shape, init::FanMode::FanIn)?,
        ExpertInit::Copy { noise_std } => {
            let noise = with_default_rng(|rng| Tensor::randn(shape, 0.0, noise_std, rng))?;
            crate::autograd::no_grad(|| conv.weight.add(&noise))?
        }
    };
    let bias = match (&conv.bias, how) {
        (Some(b), ExpertInit::Copy { .. }) => Some(b.detach()),
        (Some(b), ExpertInit::KaimingNormal) => {
            let fan_in = conv.weight.dims()[1..].iter().product();
            Some(init::default_bias(b.numel(), fan_in)?)
        }
        (None, _) => None,
    };
    Ok(Conv2d {
        weight: weight.detach().with_requires_grad(true),
        bias: bias.map(|b| b.detach().with_requires_grad(true)),
        params: conv.params,
    })
}

/// Expert `e` of a layer's expert convs.
pub(crate) fn conv_expert<'a>(
    experts: &'a ModuleList,
    layer: &'static str,
    e: usize,
) -> Result<&'a Conv2d> {
    experts
        .items
        .get(e)
        .and_then(|m| m.as_any().downcast_ref::<Conv2d>())
        .ok_or_else(|| Error::invalid(layer, format!("no expert {e} (of {})", experts.items.len())))
}

/// Replaces the conv at `path` of `root` by the layer `build` makes of it; a path that is not
/// a `Conv2d`, or one `build` refuses, is an error naming it.
pub(crate) fn replace_conv_by(
    root: &mut dyn Module,
    path: &str,
    layer: &'static str,
    build: impl FnOnce(&Conv2d) -> Result<Box<dyn Module>>,
) -> Result<()> {
    let found = get_module(root, path)?;
    let conv = found.as_any().downcast_ref::<Conv2d>().ok_or_else(|| {
        Error::invalid(
            layer,
            format!("`{path}` is a {}, not a Conv2d", found.type_name()),
        )
    })?;
    let replacement = build(conv).map_err(|e| Error::invalid(layer, format!("`{path}`: {e}")))?;
    replace_module(root, path, replacement)?;
    Ok(())
}

/// Replaces the conv at `path` of `root` by a PatchConvMoE (moe.md §3); a path that is not a
/// stride-1, size-preserving `Conv2d` is an error naming it.
pub fn replace_conv_with_moe(
    root: &mut dyn Module,
    path: &str,
    config: PatchConvMoeConfig,
) -> Result<()> {
    replace_conv_by(root, path, "PatchConvMoE", |conv| {
        Ok(Box::new(PatchConvMoE::from_conv(conv, config)?))
    })
}

/// The sum of the weighted balancing losses of every PatchConvMoE in `root` from their last
/// forward (add it to the task loss), or `None` when there is none.
pub fn balance_loss(root: &dyn Module) -> Result<Option<Tensor>> {
    let mut total: Option<Tensor> = None;
    let mut error = None;
    crate::nn::visit_modules(root, &mut |_, m| {
        if let Some(moe) = m.as_any().downcast_ref::<PatchConvMoE>() {
            if let Some(record) = moe.last_routing() {
                total = match total.take() {
                    None => Some(record.balance_loss),
                    Some(t) => match t.add(&record.balance_loss) {
                        Ok(sum) => Some(sum),
                        Err(e) => {
                            error = Some(e);
                            None
                        }
                    },
                };
            }
        }
    });
    match error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Per-token class histograms `[T, classes]` for a routing grid: each labelled pixel of
/// `labels [B, H, W]` (values ≥ `classes`, e.g. 255, are ignored) is brought to the feature map
/// the grid cuts (pixel `(y, x)` lands on feature row `⌊y·h/H⌋`, column `⌊x·w/W⌋`) and counted
/// for the token whose patch holds it.
pub fn token_class_histograms(labels: &Tensor, grid: PatchGrid, classes: usize) -> Result<Tensor> {
    labels.expect_rank("token_class_histograms", "labels", 3)?;
    let [batch, height, width] = [labels.dims()[0], labels.dims()[1], labels.dims()[2]];
    if batch != grid.batch || height == 0 || width == 0 {
        return Err(Error::shape(
            "token_class_histograms",
            format!(
                "labels {} do not fit a routing grid of batch {}",
                labels.shape(),
                grid.batch
            ),
        ));
    }
    let (rows, cols) = (grid.rows(), grid.cols());
    let mut histograms = vec![0.0f32; grid.tokens() * classes];
    let values = labels.try_to_vec()?;
    for b in 0..batch {
        for y in 0..height {
            let row = (y * grid.height / height) / grid.patch[0];
            for x in 0..width {
                let class = values[(b * height + y) * width + x];
                if !(class >= 0.0 && (class as usize) < classes) {
                    continue;
                }
                let col = (x * grid.width / width) / grid.patch[1];
                let token = (b * rows + row) * cols + col;
                histograms[token * classes + class as usize] += 1.0;
            }
        }
    }
    Tensor::from_vec(histograms, [grid.tokens(), classes])
}

/// Adds the last routing of every PatchConvMoE under `root` to `stats` (keyed by the layer's
/// path, created on first use), with the class histograms of `labels` when given: the
/// collection hook of the routing analysis (moe.md §4). Only counts are kept, no per-token data.
pub fn collect_routing_stats(
    root: &dyn Module,
    labels: Option<&Tensor>,
    classes: usize,
    stats: &mut BTreeMap<String, RoutingStats>,
) -> Result<()> {
    let mut records = Vec::new();
    crate::nn::visit_modules(root, &mut |path, m| {
        if let Some(moe) = m.as_any().downcast_ref::<PatchConvMoE>() {
            if let Some(record) = moe.last_routing() {
                records.push((path.to_string(), moe.config.num_experts, record));
            }
        }
    });
    for (path, experts, record) in records {
        let histograms = labels
            .map(|l| token_class_histograms(l, record.grid, classes))
            .transpose()?;
        let entry = match stats.entry(path) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(RoutingStats::new(experts, classes)?)
            }
        };
        entry.update(&record.indices, histograms.as_ref())?;
    }
    Ok(())
}
