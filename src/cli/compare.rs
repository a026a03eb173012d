//! `moeseg compare RUN_OR_SWEEP...`: argument handling; the work is in
//! [`crate::train::compare`].

use crate::error::Result;
use crate::train::compare;
use clap::Args;
use std::path::PathBuf;

/// Options of `moeseg compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Run folders and sweep folders (a sweep stands for its runs).
    #[arg(required = true, value_name = "RUN_OR_SWEEP")]
    pub runs: Vec<PathBuf>,
    /// Folder for compare.csv, compare.md and the plots (default: the only sweep folder given,
    /// else `compare/` in the current folder).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Runs `moeseg compare`.
pub fn run(args: &CompareArgs) -> Result<()> {
    let runs = compare::collect_runs(&args.runs)?;
    let out = match (&args.out, args.runs.as_slice()) {
        (Some(out), _) => out.clone(),
        (None, [one]) if one.join(crate::train::sweep::SWEEP_FILE).exists() => one.clone(),
        (None, _) => PathBuf::from("compare"),
    };
    let text = compare::write_comparison(&runs, &out)?;
    println!("{text}");
    println!(
        "\nwritten: {} (compare.csv, compare.md, compare_loss.png, compare_miou.png, compare_iou.png)",
        out.display()
    );
    Ok(())
}
