//! Running cases: each case's inputs are drawn once, the case runs on the reference backend and
//! then `runs` times on the target backend, and every output of the first target run is
//! compared with the reference; later target runs must reproduce the first one bit for bit.

use super::cases::{table, Case};
use super::compare::{bitwise_differences, compare};
use super::report::Row;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::tensor::{Rng, Storage};

/// A hook called before each target run of a case with the run's number (0, 1, ...): the place
/// to pick a thread schedule, a stream, a launch order. An error fails the case.
pub type BeforeRun = Box<dyn Fn(usize) -> Result<()> + Send + Sync>;

/// What [`run_table`] runs and how.
///
/// With `runs > 1` the target runs each case `runs` times on the same inputs (`before_run(i)`
/// is called before run `i`); run 0 is compared with the reference under the case's tolerance,
/// and runs 1.. must equal run 0 bitwise (NaN compares by bits), or the output's row fails with
/// "outputs differ between runs 0 and i (race?)". An emulated device runs a case under two
/// thread schedules this way; on a real GPU `runs > 1` flags nondeterministic kernels.
pub struct RunOptions {
    /// Only the cases whose op name contains this text.
    pub filter: Option<String>,
    /// Seed of the random inputs.
    pub seed: u64,
    /// Target runs per case (0 counts as 1). Default 1.
    pub runs: usize,
    /// Called before each target run; `None` does nothing.
    pub before_run: Option<BeforeRun>,
}

impl RunOptions {
    /// Every case, one target run, inputs from `seed`.
    pub fn new(seed: u64) -> RunOptions {
        RunOptions {
            filter: None,
            seed,
            runs: 1,
            before_run: None,
        }
    }

    /// Only the cases whose op name contains `filter` (all with `None`).
    pub fn filter(mut self, filter: Option<&str>) -> RunOptions {
        self.filter = filter.map(str::to_string);
        self
    }

    /// `runs` target runs per case, calling `before_run(i)` before run `i`.
    pub fn repeat(mut self, runs: usize, before_run: Option<BeforeRun>) -> RunOptions {
        self.runs = runs;
        self.before_run = before_run;
        self
    }

    /// For the emulated device: at least two target runs per case, run `i` under thread
    /// schedule [`schedule_for_run`]`(i)` (forward, reverse, then random), so a data race shows
    /// as outputs that differ between runs. Callers clear the schedule afterwards
    /// ([`crate::backend::cuda::emu::set_schedule`]`(None)`).
    ///
    /// [`schedule_for_run`]: crate::backend::cuda::emu::schedule_for_run
    pub fn under_schedules(mut self) -> RunOptions {
        use crate::backend::cuda::emu;
        self.runs = self.runs.max(2);
        self.before_run = Some(Box::new(|run| {
            emu::set_schedule(Some(emu::schedule_for_run(run)));
            Ok(())
        }));
        self
    }

    /// Target runs per case (at least 1).
    pub fn target_runs(&self) -> usize {
        self.runs.max(1)
    }

    fn selects(&self, case: &Case) -> bool {
        self.filter.as_deref().is_none_or(|f| case.op.contains(f))
    }
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions::new(0)
    }
}

/// Draws the inputs of `case` from `rng` as host vectors.
pub fn draw_inputs(case: &Case, rng: &mut Rng) -> Vec<Vec<f32>> {
    case.inputs.iter().map(|input| input.draw(rng)).collect()
}

/// Uploads `inputs` to `backend`, runs `case` there and downloads the outputs. With `poison`,
/// NaN buffers of those lengths are first allocated and released to the backend's allocator,
/// so that an element a kernel forgets to write reads as NaN.
fn execute(
    case: &Case,
    backend: &dyn Backend,
    inputs: &[Vec<f32>],
    poison: Option<&[usize]>,
) -> Result<Vec<Vec<f32>>> {
    let storages: Vec<Storage> = inputs
        .iter()
        .map(|data| backend.upload(data.clone()))
        .collect::<Result<_>>()?;
    if let Some(lens) = poison {
        let poisoned: Vec<Storage> = lens
            .iter()
            .map(|&len| backend.full(len, f32::NAN))
            .collect::<Result<_>>()?;
        drop(poisoned);
    }
    let outputs = (case.run)(backend, &storages)?;
    outputs.iter().map(Storage::try_to_vec).collect()
}

/// Runs `case` (number `index` of its table) on `reference` and `target` with `inputs` and
/// returns one [`Row`] per output, or a single error row when the case could not run.
pub fn run_case(
    index: usize,
    case: &Case,
    inputs: &[Vec<f32>],
    reference: &dyn Backend,
    target: &dyn Backend,
    device: &str,
    options: &RunOptions,
) -> Vec<Row> {
    let error =
        |msg: String, no_kernel: bool| vec![Row::error(index, case, device, msg, no_kernel)];
    let want = match execute(case, reference, inputs, None) {
        Ok(want) => want,
        Err(e) => return error(format!("reference: {e}"), false),
    };
    let lens: Vec<usize> = want.iter().map(Vec::len).collect();
    let runs = options.target_runs();
    let mut got: Vec<Vec<Vec<f32>>> = Vec::with_capacity(runs);
    for run in 0..runs {
        let prefix = if runs > 1 {
            format!("run {run}: ")
        } else {
            String::new()
        };
        if let Some(before_run) = &options.before_run {
            if let Err(e) = before_run(run) {
                return error(format!("{prefix}before the run: {e}"), false);
            }
        }
        match execute(case, target, inputs, Some(&lens)) {
            Ok(outputs) => got.push(outputs),
            Err(Error::Unsupported(msg)) => return error(format!("{prefix}{msg}"), true),
            Err(e) => return error(format!("{prefix}{e}"), false),
        }
    }
    let first = &got[0];
    let count = want.len().max(first.len());
    let mut rows: Vec<Row> = want
        .iter()
        .zip(first)
        .enumerate()
        .map(|(k, (w, g))| {
            let name = case.output_name(k, count);
            Row::compared(index, case, device, name, compare(w, g, case.tolerance))
        })
        .collect();
    if first.len() != want.len() {
        let msg = format!(
            "the target returned {} output(s), the reference {}",
            first.len(),
            want.len()
        );
        rows.push(Row::error(index, case, device, msg, false));
    }
    // Later runs must reproduce run 0 bit for bit; the first differing run is reported.
    for (run, outputs) in got.iter().enumerate().skip(1) {
        if outputs.len() != first.len() {
            let msg = format!(
                "outputs differ between runs 0 and {run} (race?): {} output(s) against {}",
                first.len(),
                outputs.len()
            );
            rows.push(Row::error(index, case, device, msg, false));
            break;
        }
        for ((row, a), b) in rows.iter_mut().zip(first).zip(outputs) {
            let differ = bitwise_differences(a, b);
            if differ > 0 && row.error.is_none() {
                row.pass = false;
                row.error = Some(format!(
                    "outputs differ between runs 0 and {run} (race?): {differ} of {} elements",
                    a.len().max(b.len())
                ));
            }
        }
    }
    rows
}

/// Runs every case of `cases` that `options` selects and returns their rows, calling
/// `on_case` with each case's rows as soon as it has run. Inputs are drawn for every case,
/// selected or not, so a case sees the same inputs for a seed whatever the filter.
pub fn run_cases(
    cases: &[Case],
    reference: &dyn Backend,
    target: &dyn Backend,
    device: &str,
    options: &RunOptions,
    mut on_case: impl FnMut(&[Row]),
) -> Vec<Row> {
    let mut rng = Rng::new(options.seed);
    let mut rows = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let inputs = draw_inputs(case, &mut rng);
        if !options.selects(case) {
            continue;
        }
        let case_rows = run_case(index, case, &inputs, reference, target, device, options);
        on_case(&case_rows);
        rows.extend(case_rows);
    }
    rows
}

/// [`run_cases`] over the whole [`table`]: every kernel, forward and backward, of `target`
/// (named `device` in the rows) against `reference`.
pub fn run_table(
    reference: &dyn Backend,
    target: &dyn Backend,
    device: &str,
    options: &RunOptions,
    on_case: impl FnMut(&[Row]),
) -> Vec<Row> {
    run_cases(&table(), reference, target, device, options, on_case)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::verify::{text_header, text_line, CaseFn, Input, Tolerance, Totals, FAMILIES};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The whole table CPU-vs-CPU: every case's shapes fit its kernels and the reference is
    /// deterministic, so only device differences can fail on a GPU.
    #[test]
    fn table_passes_cpu_against_cpu() {
        let mut lines = vec![text_header()];
        let options = RunOptions::new(7).repeat(2, None);
        let rows = run_table(&CpuBackend, &CpuBackend, "cpu", &options, |rows| {
            lines.push(text_line(rows))
        });
        println!("{}", lines.join("\n"));
        let totals = Totals::from_rows(&rows);
        assert_eq!(totals.failed, 0, "{}", lines.join("\n"));
        assert!(totals.cases > 40, "the table has {} cases", totals.cases);
        assert_eq!(totals.cases, lines.len() - 1);
        assert!(totals.rows > totals.cases);
        for family in FAMILIES {
            assert!(rows.iter().any(|r| r.family == family), "{family}");
        }
    }

    #[test]
    fn the_filter_keeps_the_inputs_of_the_full_run() {
        let full = run_table(&CpuBackend, &CpuBackend, "cpu", &RunOptions::new(3), |_| {});
        let options = RunOptions::new(3).filter(Some("softmax_backward"));
        let some = run_table(&CpuBackend, &CpuBackend, "cpu", &options, |_| {});
        assert!(!some.is_empty());
        assert!(some.iter().all(|r| r.op.contains("softmax_backward")));
        for row in &some {
            assert!(full.contains(row), "{row:?}");
        }
    }

    /// A case whose output depends on a "schedule" picked by `before_run`: the repeated runs
    /// differ, which the runner reports as a race; with one schedule it passes.
    #[test]
    fn repeated_runs_that_differ_are_reported_as_races() {
        let schedule = Arc::new(AtomicUsize::new(0));
        let seen = schedule.clone();
        let racy = Case {
            family: "test",
            op: "racy".to_string(),
            shape: "[3]".to_string(),
            inputs: vec![Input::Normal(3)],
            tolerance: Tolerance::EXACT,
            outputs: vec!["stable", "racy"],
            run: Box::new(move |b, x| {
                let mut data = x[0].try_to_vec()?;
                let stable = b.upload(data.clone())?;
                // Only run 2's schedule changes the last element, as a lost update would.
                if seen.load(Ordering::SeqCst) == 2 {
                    data[2] += 1.0;
                }
                Ok(vec![stable, b.upload(data)?])
            }),
        };
        let cases = [racy];
        let before_run = {
            let schedule = schedule.clone();
            move |run: usize| {
                schedule.store(run, Ordering::SeqCst);
                Ok(())
            }
        };
        let options = RunOptions::new(1).repeat(3, Some(Box::new(before_run)));
        let rows = run_cases(&cases, &CpuBackend, &CpuBackend, "cpu", &options, |_| {});
        assert_eq!(rows.len(), 2);
        assert!(rows[0].pass && rows[0].error.is_none(), "{:?}", rows[0]);
        assert!(!rows[1].pass);
        let msg = rows[1].error.as_deref().unwrap();
        assert!(
            msg.contains("outputs differ between runs 0 and 2 (race?)"),
            "{msg}"
        );
        assert!(msg.contains("1 of 3"), "{msg}");
        assert_eq!(schedule.load(Ordering::SeqCst), 2);
        assert!(text_line(&rows).contains("FAIL"));
        // One run (the default): the same case passes, and before_run is not needed.
        let rows = run_cases(
            &cases,
            &CpuBackend,
            &CpuBackend,
            "cpu",
            &RunOptions::new(1),
            |_| {},
        );
        assert!(rows.iter().all(|r| r.pass), "{rows:?}");
    }

    #[test]
    fn errors_become_rows() {
        // The reference is the first call of a case, the target the later ones.
        let calls = Arc::new(AtomicUsize::new(0));
        let target_only = |calls: Arc<AtomicUsize>, error: fn() -> Error| -> CaseFn {
            Box::new(move |b, _| match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(vec![b.full(2, 1.0)?]),
                _ => Err(error()),
            })
        };
        let case = |op: &str, run: CaseFn| Case {
            family: "test",
            op: op.to_string(),
            shape: String::new(),
            inputs: vec![],
            tolerance: Tolerance::EXACT,
            outputs: vec![],
            run,
        };
        let cases = [
            case(
                "no kernel",
                target_only(calls.clone(), || {
                    Error::Unsupported("no kernel for it".to_string())
                }),
            ),
            case(
                "broken target",
                target_only(Arc::new(AtomicUsize::new(0)), || {
                    Error::invalid("broken", "bad shape")
                }),
            ),
            case(
                "broken reference",
                Box::new(|_, _| Err(Error::invalid("broken", "bad reference"))),
            ),
        ];
        let options = RunOptions::new(1);
        let rows = run_cases(&cases, &CpuBackend, &CpuBackend, "cpu", &options, |_| {});
        assert_eq!(rows.len(), 3);
        assert!(
            rows.iter().all(|r| !r.pass && r.output.is_none()),
            "{rows:?}"
        );
        assert!(rows[0].no_kernel && !rows[1].no_kernel && !rows[2].no_kernel);
        assert_eq!(rows[0].error.as_deref(), Some("no kernel for it"));
        assert!(rows[1].error.as_deref().unwrap().contains("bad shape"));
        assert!(rows[2].error.as_deref().unwrap().starts_with("reference:"));
        assert!(text_line(&rows[..1]).contains("NO KERNEL: no kernel for it"));
        assert!(text_line(&rows[1..2]).contains("FAIL: "));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let totals = Totals::from_rows(&rows);
        assert_eq!((totals.cases, totals.failed, totals.no_kernel), (3, 3, 1));
    }
}
