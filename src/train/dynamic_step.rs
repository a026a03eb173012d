//! What a training step adds for the dynamic routing networks: the budget loss on the batch's
//! expected FLOPs (from [`crate::models::dynamic::DynamicNet4Seg::last_record`]), switched on
//! by training progress, and the figures logged with each step.

use crate::error::Result;
use crate::models::dynamic::{dynamic_net, BudgetConfig};
use crate::models::SegNet;
use crate::nn::Module;
use crate::tensor::Tensor;
use crate::train::config::Config;

/// The budget constraint of a run (`None` unless the model is a dynamic network). A
/// `flops_all` of 0 becomes the full space's expected FLOPs at the training crop.
pub fn run_budget(config: &Config, model: &dyn SegNet) -> Result<Option<BudgetConfig>> {
    let Some(net) = dynamic_net(model as &dyn Module) else {
        return Ok(None);
    };
    let crop = match config.data.crop {
        [0, 0] => [config.data.synthetic.height, config.data.synthetic.width],
        crop => crop,
    };
    let budget = config.model.dynamic.budget(net.full_space_expected(crop))?;
    Ok(Some(budget))
}

/// The budget term of the latest forward and the batch's mean expected / real FLOPs (MFLOPs).
pub struct BudgetTerm {
    /// The loss (None while off).
    pub loss: Option<Tensor>,
    /// Mean expected FLOPs of the batch.
    pub expected_mflops: f64,
    /// Mean real FLOPs of the batch.
    pub real_mflops: f64,
}

/// The budget term for the forward `model` just ran, at training progress `step_rate`.
pub fn budget_term(
    model: &dyn SegNet,
    budget: &BudgetConfig,
    step_rate: f64,
) -> Result<Option<BudgetTerm>> {
    let Some(record) = dynamic_net(model as &dyn Module).and_then(|n| n.last_record()) else {
        return Ok(None);
    };
    let expected_mflops = f64::from(record.expected.mean_all()?.item()?);
    let real_mflops = record.real.iter().sum::<f64>() / record.real.len().max(1) as f64;
    Ok(Some(BudgetTerm {
        loss: budget.loss(&record.expected, step_rate)?,
        expected_mflops,
        real_mflops,
    }))
}
