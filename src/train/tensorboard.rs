//! TensorBoard event files: every run writes `RUN/events.out.tfevents.<time>.<host>` next to
//! `metrics.jsonl`, so `tensorboard --logdir runs` shows one run per run folder (a sweep's runs
//! as `sweep/run`).
//!
//! The format: a TFRecord file (per record: the length as little-endian u64, its masked
//! CRC-32C, the bytes, their masked CRC-32C) of `Event` protocol buffers (TensorFlow's
//! `event.proto` and `summary.proto`; only the fields used here are declared). The first event
//! carries `file_version = "brain.Event:2"`; the others a `Summary` with scalar
//! (`simple_value`) or image (PNG-encoded `Summary.Image`) values.

use crate::error::{Error, Result};
use crate::train::run_dir::MetricRecord;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `tensorflow.Event` (the fields TensorBoard reads for scalars and images).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// `brain.Event:2` in the first event of a file.
    #[prost(string, optional, tag = "3")]
    pub file_version: Option<String>,
    /// The values logged at this step.
    #[prost(message, optional, tag = "5")]
    pub summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// One value per tag.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: a scalar or an image (the proto's `oneof value` members used
/// here, as optional fields with the same tags).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    /// The tag (`train/loss`, `val/iou/road`, ...).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// A scalar.
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
    /// An image.
    #[prost(message, optional, tag = "4")]
    pub image: Option<SummaryImage>,
}

/// `tensorflow.Summary.Image`: an encoded (PNG) picture.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryImage {
    /// Rows.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Columns.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 1 grey, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The PNG bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// TFRecord's masked CRC-32C (Castagnoli): rotated right by 15 bits plus a constant.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, masked CRC of the length, data, masked CRC of the data.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The machine's host name (`localhost` when the system does not say).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).to_string();
    if rc != 0 || name.is_empty() {
        "localhost".to_string()
    } else {
        name.replace(['/', '\\'], "_")
    }
}

/// Appends events to one event file of a run folder.
pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// A new event file `dir/events.out.tfevents.<seconds>.<host>` (a `.N` suffix when that name
    /// is taken, e.g. by a resume in the same second), starting with the file-version event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file(dir, format!("cannot create: {e}")))?;
        let wall = now_seconds();
        let base = format!("events.out.tfevents.{}.{}", wall as u64, host_name());
        let mut path = dir.join(&base);
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("{base}.{n}"));
            n += 1;
        }
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::file(&path, format!("cannot create: {e}")))?;
        let mut writer = EventWriter { path, file };
        writer.write_event(&Event {
            wall_time: wall,
            step: 0,
            file_version: Some("brain.Event:2".into()),
            summary: None,
        })?;
        Ok(writer)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one event as a TFRecord and flushes it (TensorBoard reads files while they grow).
    pub fn write_event(&mut self, event: &Event) -> Result<()> {
        let record = tfrecord(&event.encode_to_vec());
        self.file
            .write_all(&record)
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::file(&self.path, format!("cannot write an event: {e}")))
    }

    /// Scalars `(tag, value)` at `step`, in one event.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: tag.clone(),
                simple_value: Some(*v as f32),
                image: None,
            })
            .collect();
        self.write_event(&Event {
            wall_time: now_seconds(),
            step: step as i64,
            file_version: None,
            summary: Some(Summary { value }),
        })
    }

    /// An RGB picture, PNG-encoded, under `tag` at `step`.
    pub fn image(&mut self, step: u64, tag: &str, picture: &image::RgbImage) -> Result<()> {
        let mut png = Vec::new();
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| Error::file(&self.path, format!("cannot encode image `{tag}`: {e}")))?;
        self.write_event(&Event {
            wall_time: now_seconds(),
            step: step as i64,
            file_version: None,
            summary: Some(Summary {
                value: vec![SummaryValue {
                    tag: tag.to_string(),
                    simple_value: None,
                    image: Some(SummaryImage {
                        height: picture.height() as i32,
                        width: picture.width() as i32,
                        colorspace: 3,
                        encoded_image_string: png,
                    }),
                }],
            }),
        })
    }

    /// The scalars of one `metrics.jsonl` record: `train/*` for step records, `epoch/*` for
    /// epoch means, `val/*` for evaluations (per-class IoU as `val/iou/<class name>`).
    pub fn record(&mut self, record: &MetricRecord, class_names: &[String]) -> Result<()> {
        self.scalars(record.step, &record_scalars(record, class_names))
    }
}

/// The TensorBoard tags and values of one metrics record (see [`EventWriter::record`]).
pub fn record_scalars(record: &MetricRecord, class_names: &[String]) -> Vec<(String, f64)> {
    let section = match record.kind.as_str() {
        "step" => "train",
        "eval" => "val",
        other => other,
    };
    let fields: [(&str, Option<f64>); 9] = [
        ("loss", record.loss),
        ("main_loss", record.main_loss),
        ("aux_loss", record.aux_loss),
        ("balance_loss", record.balance_loss),
        ("lr", record.lr),
        ("images_per_s", record.images_per_s),
        ("mIoU", record.miou),
        ("pixel_accuracy", record.pixel_accuracy),
        ("loss", record.val_loss),
    ];
    let mut out: Vec<(String, f64)> = fields
        .iter()
        .filter_map(|(name, v)| v.map(|v| (format!("{section}/{name}"), v)))
        .collect();
    if let Some(iou) = &record.iou {
        for (c, v) in iou.iter().enumerate() {
            if let Some(v) = v {
                let name = class_names
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| format!("class {c}"));
                out.push((format!("{section}/iou/{name}"), *v));
            }
        }
    }
    for (layer, stats) in record.routing.iter().flatten() {
        out.push((format!("{section}/moe/{layer}/NRE"), stats.nre));
        out.push((format!("{section}/moe/{layer}/TEC"), stats.tec));
    }
    out
}
