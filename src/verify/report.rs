//! The results of a run: one [`Row`] per (case, output), the [`Totals`], and the whole run as a
//! [`Report`] (JSON via serde) with the device, seed, version, commit and date; plus the text
//! table `moeseg verify` prints.

use super::cases::Case;
use super::compare::{Comparison, Tolerance};
use super::runner::RunOptions;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// One output of one case on one device (or the case, when it could not run).
///
/// In JSON the measures are numbers; `inf`/`-inf` are the strings `"inf"`/`"-inf"` and NaN
/// (not measured: the case errored) is `null`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The case's position in the table (the rows of one case share it).
    pub case: usize,
    /// The op family (`kernels/<family>.cu`).
    pub family: String,
    /// The case's op, e.g. `softmax_backward`.
    pub op: String,
    /// The case's shapes and options.
    pub shape: String,
    /// The output's name; `None` on the row of a case that errored as a whole.
    pub output: Option<String>,
    /// The target device, e.g. `cuda:0`, `cpu`.
    pub device: String,
    pub tolerance: Tolerance,
    #[serde(with = "measure")]
    pub max_abs: f32,
    #[serde(with = "measure")]
    pub max_rel: f32,
    #[serde(with = "measure")]
    pub rel_norm: f32,
    /// Elements outside the tolerance (NaN included).
    pub bad: usize,
    pub pass: bool,
    /// The target has no kernel for the case (`Error::Unsupported`).
    #[serde(default)]
    pub no_kernel: bool,
    /// Why the row failed, when not (only) by its measures: the case's error, or repeated runs
    /// that differ.
    pub error: Option<String>,
}

impl Row {
    /// The row of output `output` of case `case` (number `index`).
    pub fn compared(
        index: usize,
        case: &Case,
        device: &str,
        output: String,
        comparison: Comparison,
    ) -> Row {
        Row {
            case: index,
            family: case.family.to_string(),
            op: case.op.clone(),
            shape: case.shape.clone(),
            output: Some(output),
            device: device.to_string(),
            tolerance: case.tolerance,
            max_abs: comparison.max_abs,
            max_rel: comparison.max_rel,
            rel_norm: comparison.rel_norm,
            bad: comparison.bad,
            pass: comparison.pass,
            no_kernel: false,
            error: None,
        }
    }

    /// A failed row without measures: the case errored (`no_kernel`: the target has no kernel).
    pub fn error(index: usize, case: &Case, device: &str, msg: String, no_kernel: bool) -> Row {
        Row {
            case: index,
            family: case.family.to_string(),
            op: case.op.clone(),
            shape: case.shape.clone(),
            output: None,
            device: device.to_string(),
            tolerance: case.tolerance,
            max_abs: f32::NAN,
            max_rel: f32::NAN,
            rel_norm: f32::NAN,
            bad: 0,
            pass: false,
            no_kernel,
            error: Some(msg),
        }
    }
}

/// Serde of a measure: a number when finite, `"inf"`/`"-inf"`, and `null` for NaN.
mod measure {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f32, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f32(*value)
        } else if value.is_nan() {
            serializer.serialize_none()
        } else if *value > 0.0 {
            serializer.serialize_str("inf")
        } else {
            serializer.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Measure {
        Number(f32),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f32, D::Error> {
        match Option::<Measure>::deserialize(deserializer)? {
            None => Ok(f32::NAN),
            Some(Measure::Number(value)) => Ok(value),
            Some(Measure::Text(text)) => match text.as_str() {
                "inf" => Ok(f32::INFINITY),
                "-inf" => Ok(f32::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!(
                    "a measure is a number, \"inf\", \"-inf\" or null, not {other:?}"
                ))),
            },
        }
    }
}

/// Counts of a run. A case passes when every one of its rows passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub cases: usize,
    pub passed: usize,
    /// Cases that did not pass (those without a kernel included).
    pub failed: usize,
    /// Cases the target has no kernel for.
    pub no_kernel: usize,
    pub rows: usize,
    pub rows_failed: usize,
}

impl Totals {
    /// The totals of `rows` (the rows of a case are grouped by [`Row::case`]).
    pub fn from_rows(rows: &[Row]) -> Totals {
        let mut totals = Totals {
            rows: rows.len(),
            rows_failed: rows.iter().filter(|r| !r.pass).count(),
            ..Totals::default()
        };
        for group in case_groups(rows) {
            totals.cases += 1;
            if group.iter().all(|r| r.pass) {
                totals.passed += 1;
            } else {
                totals.failed += 1;
            }
            if group.iter().any(|r| r.no_kernel) {
                totals.no_kernel += 1;
            }
        }
        totals
    }
}

/// `rows` split into runs of consecutive rows of the same case.
pub fn case_groups(rows: &[Row]) -> impl Iterator<Item = &[Row]> {
    rows.chunk_by(|a, b| a.case == b.case)
}

/// A whole run of the table, as `moeseg verify --json` writes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `env!("CARGO_PKG_VERSION")` of the moeseg that ran.
    pub moeseg_version: String,
    /// `git rev-parse HEAD` of the source tree it was built from, when available.
    pub git_commit: Option<String>,
    /// When the run finished, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub date: String,
    /// The command line, when known (e.g. `moeseg verify --device cpu --seed 1 --json ...`).
    pub command: Option<String>,
    /// The target device, e.g. `cuda:0`, `cpu`.
    pub device: String,
    /// What the device is (e.g. `NVIDIA H100 80GB HBM3, sm_90`), when known.
    pub device_description: Option<String>,
    /// The reference device (`cpu`).
    pub reference: String,
    pub seed: u64,
    /// Target runs per case (bitwise-compared with each other when more than one).
    pub runs: usize,
    /// The op filter, when the run was not the whole table.
    pub filter: Option<String>,
    pub totals: Totals,
    pub rows: Vec<Row>,
}

impl Report {
    /// The report of `rows`, a run of `device` against `reference` under `options`: totals,
    /// version, commit and date filled in; no command or device description.
    pub fn new(reference: &str, device: &str, options: &RunOptions, rows: Vec<Row>) -> Report {
        Report {
            moeseg_version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: git_commit(),
            date: utc_now(),
            command: None,
            device: device.to_string(),
            device_description: None,
            reference: reference.to_string(),
            seed: options.seed,
            runs: options.target_runs(),
            filter: options.filter.clone(),
            totals: Totals::from_rows(&rows),
            rows,
        }
    }

    /// The op families with at least one row.
    pub fn families(&self) -> BTreeSet<&str> {
        self.rows.iter().map(|r| r.family.as_str()).collect()
    }

    /// The report as JSON: pretty-printed, with one row per line (a record diffs by row).
    pub fn to_json(&self) -> String {
        // A report has string keys and serializable fields only: serializing cannot fail.
        const FAILS: &str = "a verify report serializes";
        let mut header = self.clone();
        let rows = std::mem::take(&mut header.rows);
        let mut text = serde_json::to_string_pretty(&header).expect(FAILS);
        // `rows` is the last field: reopen its empty array and list the rows, one a line.
        let empty = "\"rows\": []\n}";
        debug_assert!(text.ends_with(empty));
        text.truncate(text.len() - empty.len());
        text.push_str("\"rows\": [");
        for (i, row) in rows.iter().enumerate() {
            text.push_str(if i == 0 { "\n    " } else { ",\n    " });
            text.push_str(&serde_json::to_string(row).expect(FAILS));
        }
        text.push_str(if rows.is_empty() {
            "]\n}\n"
        } else {
            "\n  ]\n}\n"
        });
        text
    }

    /// Parses a report written by [`Report::write_json`].
    pub fn from_json(text: &str) -> Result<Report> {
        serde_json::from_str(text)
            .map_err(|e| Error::invalid("verify report", format!("not a verify report: {e}")))
    }

    /// Writes the report as JSON to `path` (atomically, creating its folder).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::file(dir, format!("cannot create the folder: {e}")))?;
        }
        crate::io::safetensors::write_atomically(path, self.to_json().as_bytes())
    }

    /// Reads a report from a JSON file.
    pub fn read_json(path: &Path) -> Result<Report> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        Report::from_json(&text).map_err(|e| Error::file(path, e.to_string()))
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_date(seconds)
}

/// `seconds` since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_date(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (y, m, d) = crate::train::run_dir::civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The commit of the source tree this binary was built from (`git rev-parse HEAD` in
/// `CARGO_MANIFEST_DIR`), or `None` where git or the tree is not there.
pub fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// The header of the text table.
pub fn text_header() -> String {
    format!(
        "{:<38} {:<34} {:>10} {:>10} {:>10} {:>16}  result",
        "op", "shape", "max abs", "max rel", "rel norm", "tol (atol,rtol)"
    )
}

/// The text line of one case from its rows (all with the same [`Row::case`]): the worst
/// measures over the outputs and `pass`/`FAIL`, or the case's error.
pub fn text_line(rows: &[Row]) -> String {
    let Some(first) = rows.first() else {
        return String::new();
    };
    let (op, shape) = (&first.op, &first.shape);
    if let Some(row) = rows.iter().find(|r| r.output.is_none()) {
        let msg = row.error.as_deref().unwrap_or("failed");
        return if row.no_kernel {
            format!("{op:<38} {shape:<34} NO KERNEL: {msg}")
        } else {
            format!("{op:<38} {shape:<34} FAIL: {msg}")
        };
    }
    let worst = |f: fn(&Row) -> f32| rows.iter().map(f).fold(0.0f32, f32::max);
    let tol = format!("{:.0e},{:.0e}", first.tolerance.atol, first.tolerance.rtol);
    let pass = rows.iter().all(|r| r.pass);
    let mut line = format!(
        "{op:<38} {shape:<34} {:>10.2e} {:>10.2e} {:>10.2e} {tol:>16}  {}",
        worst(|r| r.max_abs),
        worst(|r| r.max_rel),
        worst(|r| r.rel_norm),
        if pass { "pass" } else { "FAIL" }
    );
    for row in rows.iter().filter(|r| r.error.is_some()) {
        let output = row.output.as_deref().unwrap_or("-");
        line.push_str(&format!(
            "  [{output}: {}]",
            row.error.as_deref().unwrap_or_default()
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{compare, Input};

    fn case() -> Case {
        Case {
            family: "elementwise",
            op: "unary Exp".to_string(),
            shape: "[3]".to_string(),
            inputs: vec![Input::Normal(3)],
            tolerance: Tolerance::TRANSCENDENTAL,
            outputs: vec![],
            run: Box::new(|_, x| Ok(x.to_vec())),
        }
    }

    #[test]
    fn a_report_round_trips_through_json_with_infinities_and_errors() {
        let case = case();
        let tol = case.tolerance;
        let rows = vec![
            Row::compared(0, &case, "cpu", "out".into(), compare(&[1.0], &[1.0], tol)),
            Row::compared(1, &case, "cpu", "out".into(), compare(&[1.0], &[], tol)),
            Row::error(2, &case, "cpu", "no kernel here".into(), true),
        ];
        assert_eq!(rows[1].max_abs, f32::INFINITY);
        let report = Report::new("cpu", "cpu", &RunOptions::new(5), rows);
        assert_eq!(
            report.totals,
            Totals {
                cases: 3,
                passed: 1,
                failed: 2,
                no_kernel: 1,
                rows: 3,
                rows_failed: 2
            }
        );
        let json = report.to_json();
        assert!(json.contains("\"max_abs\":\"inf\""), "{json}");
        assert!(json.contains("\"max_abs\":null"), "{json}");
        assert_eq!(json.lines().filter(|l| l.contains("\"op\":")).count(), 3);
        let empty = Report::new("cpu", "cpu", &RunOptions::new(5), Vec::new());
        assert_eq!(Report::from_json(&empty.to_json()).unwrap(), empty);
        let back = Report::from_json(&json).unwrap();
        assert_eq!(back.rows[..2], report.rows[..2]);
        assert!(back.rows[2].max_abs.is_nan() && back.rows[2].no_kernel);
        assert_eq!(back.totals, report.totals);
        assert_eq!(
            back.families().into_iter().collect::<Vec<_>>(),
            ["elementwise"]
        );
        assert!(Report::from_json("{}").is_err());
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_date(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_date(951_782_400 + 3_661), "2000-02-29T01:01:01Z");
        assert_eq!(utc_now().len(), 20);
    }

    #[test]
    fn text_lines_show_the_worst_output_or_the_error() {
        let case = case();
        let tol = case.tolerance;
        let rows = vec![
            Row::compared(0, &case, "cpu", "a".into(), compare(&[1.0], &[1.0], tol)),
            Row::compared(0, &case, "cpu", "b".into(), compare(&[1.0], &[2.0], tol)),
        ];
        let line = text_line(&rows);
        assert!(
            line.starts_with("unary Exp") && line.ends_with("FAIL"),
            "{line}"
        );
        assert!(line.contains("1.00e0"), "{line}");
        assert!(text_line(&rows[..1]).ends_with("pass"));
        let error = [Row::error(0, &case, "cpu", "no kernel".into(), true)];
        assert!(text_line(&error).contains("NO KERNEL: no kernel"));
        assert_eq!(case_groups(&rows).count(), 1);
        assert_eq!(text_header().split_whitespace().next(), Some("op"));
    }
}
