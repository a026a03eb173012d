//! `moeseg bench ops`: wall times of the main kernels on one device, called through the
//! backend's family traits directly (no autograd, no tensor bookkeeping), so only the kernel
//! (and its output allocation) is timed.
//!
//! | rows | kernels | rate |
//! |---|---|---|
//! | `<conv>_fwd`, `_dgrad`, `_wgrad` | [`conv2d`](crate::ops::conv::ConvBackend::conv2d), `conv2d_input_backward`, `conv2d_weight_backward` | GFLOP/s = 2·MACs / time |
//! | `bn_fwd`, `bn_bwd` | [`NormBackend`](crate::ops::norm::NormBackend) statistics + forward (train), backward (train) | GB/s |
//! | `bilinear_x2_fwd`, `_bwd` | [`InterpolateBackend`](crate::ops::interpolate::InterpolateBackend) bilinear ×2 (align_corners false) | GB/s |
//! | `maxpool2x2_fwd`, `_bwd` | [`PoolBackend`](crate::ops::pool::PoolBackend) max pool 2×2 s2 with indices | GB/s |
//! | `copy` | a plain device copy (rayon copy on the CPU, a device-to-device memcpy on CUDA) | GB/s, the reference |
//!
//! The transposed conv rows (`convT2x2`) name the roles of `nn.ConvTranspose2d`: its forward is
//! `conv2d_input_backward`, its input gradient `conv2d`, its weight gradient
//! `conv2d_weight_backward`. Bytes are the compulsory traffic: every input tensor read once and
//! every output written once (f32), so a memory-bound kernel's `% copy` is its efficiency against
//! the copy measured in the same run. Each time is the median (and best) of `--repeats` runs after
//! one warm-up run; on CUDA the stream is synchronised after every run, inside the timed region.

use super::bench::{time_runs, Timing};
use crate::backend::{cuda, Backend, Device};
use crate::error::{Error, Result};
use crate::ops::activation::ChannelLayout;
use crate::ops::conv::{Conv2dGeometry, Conv2dParams};
use crate::ops::interpolate::{InterpolateGeometry, InterpolateMode};
use crate::ops::pool::Pool2dGeometry;
use crate::tensor::{Rng, Storage, Tensor};
use clap::Args;
use rayon::prelude::*;

/// Options of `moeseg bench ops`.
#[derive(Args, Debug, Clone)]
pub struct OpsArgs {
    /// Device: `cpu`, `cuda`, `cuda:N`, `cuda-emu[:N]` (the CUDA kernels emulated on the CPU) or
    /// `auto` (CUDA when a GPU is usable, else the CPU).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Timed runs per kernel (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Small shapes (seconds on a CPU; for tests and smoke runs).
    #[arg(long)]
    pub quick: bool,
    /// Only the rows whose name contains this text (the copy reference is always measured).
    #[arg(long = "op")]
    pub op: Option<String>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What a row's rate is computed from.
#[derive(Clone, Copy, Debug)]
enum Work {
    /// Multiply-accumulates: the rate is GFLOP/s = 2·MACs / time.
    Macs(f64),
    /// Bytes read + written: the rate is GB/s, also shown as % of the copy.
    Bytes(f64),
}

/// One kernel call to time.
struct Case<'a> {
    name: String,
    shape: String,
    work: Work,
    run: Box<dyn Fn() -> Result<Storage> + 'a>,
}

/// One measured row.
struct Measured {
    name: String,
    shape: String,
    work: Work,
    ms: Timing,
}

impl Measured {
    /// GFLOP/s or GB/s on the median time.
    fn rate(&self) -> f64 {
        let seconds = self.ms.median * 1e-3;
        match self.work {
            Work::Macs(macs) => 2.0 * macs / seconds / 1e9,
            Work::Bytes(bytes) => bytes / seconds / 1e9,
        }
    }

    /// `gflops` or `gbps` (the summary key's suffix).
    fn unit_key(&self) -> &'static str {
        match self.work {
            Work::Macs(_) => "gflops",
            Work::Bytes(_) => "gbps",
        }
    }
}

/// A conv at one geometry: `(label, geometry, transposed)`.
struct ConvSpec {
    label: &'static str,
    geometry: Conv2dGeometry,
    transposed: bool,
}

/// A conv geometry with the output size computed from the input size.
fn conv_geometry(
    [batch, in_channels, height, width]: [usize; 4],
    out_channels: usize,
    kernel: usize,
    params: Conv2dParams,
) -> Conv2dGeometry {
    let out = |size: usize, axis: usize| {
        let span = params.dilation[axis] * (kernel - 1) + 1;
        (size + params.padding[2 * axis] + params.padding[2 * axis + 1] - span)
            / params.stride[axis]
            + 1
    };
    Conv2dGeometry {
        batch,
        in_channels,
        in_size: [height, width],
        out_channels,
        kernel: [kernel; 2],
        out_size: [out(height, 0), out(width, 1)],
        params,
    }
}

/// The conv geometries: segmentation shapes, or small ones with `quick`.
fn conv_specs(quick: bool) -> Vec<ConvSpec> {
    // (3×3 64→64 map, 3×3 256→256 map, 1×1 1024→256 map, depthwise map, dilated map, convT input)
    let (c64, c256, c1024, dw, dil, up) = if quick {
        (
            [1, 16, 16, 32],
            [1, 32, 8, 16],
            [1, 64, 8, 16],
            [1, 32, 16, 32],
            [1, 32, 8, 16],
            [1, 16, 8, 16],
        )
    } else {
        (
            [2, 64, 64, 128],
            [1, 256, 64, 128],
            [1, 1024, 32, 64],
            [2, 128, 64, 128],
            [1, 256, 32, 64],
            [2, 64, 64, 128],
        )
    };
    let out_1x1 = if quick { 16 } else { 256 };
    // nn.ConvTranspose2d(C, C/2, 2, stride 2) on `up`, seen as the conv that maps its output
    // [N, C/2, 2H, 2W] back onto its input.
    let [n, c, h, w] = up;
    let transposed = conv_geometry(
        [n, c / 2, 2 * h, 2 * w],
        c,
        2,
        Conv2dParams::new(2, 0, 1, 1),
    );
    vec![
        ConvSpec {
            label: "conv3x3",
            geometry: conv_geometry(c64, c64[1], 3, Conv2dParams::new(1, 1, 1, 1)),
            transposed: false,
        },
        ConvSpec {
            label: "conv3x3_c256",
            geometry: conv_geometry(c256, c256[1], 3, Conv2dParams::new(1, 1, 1, 1)),
            transposed: false,
        },
        ConvSpec {
            label: "conv1x1",
            geometry: conv_geometry(c1024, out_1x1, 1, Conv2dParams::default()),
            transposed: false,
        },
        ConvSpec {
            label: "dwconv3x3",
            geometry: conv_geometry(dw, dw[1], 3, Conv2dParams::new(1, 1, 1, dw[1])),
            transposed: false,
        },
        ConvSpec {
            label: "dilconv3x3_d2",
            geometry: conv_geometry(dil, dil[1], 3, Conv2dParams::new(1, 2, 2, 1)),
            transposed: false,
        },
        ConvSpec {
            label: "convT2x2s2",
            geometry: transposed,
            transposed: true,
        },
    ]
}

/// `[a, b, c, d]` as `a×b×c×d`.
fn dims_text(dims: &[usize]) -> String {
    dims.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("×")
}

/// A random standard-normal tensor of `shape` on `device`, as its storage.
fn random(shape: &[usize], rng: &mut Rng, device: &Device) -> Result<Storage> {
    Ok(Tensor::randn(shape.to_vec(), 0.0, 1.0, rng)?
        .to_device(device)?
        .storage())
}

/// A plain copy of `x` into a new buffer of the same device.
fn device_copy(x: &Storage) -> Result<Storage> {
    match x {
        Storage::Cpu(data) => {
            let mut out = crate::backend::cpu::buffer_cache::uninit(data.len());
            out.par_chunks_mut(1 << 16)
                .zip(data.par_chunks(1 << 16))
                .for_each(|(d, s)| d.copy_from_slice(s));
            Ok(Storage::cpu(out))
        }
        Storage::Cuda(buffer) => Ok(Storage::Cuda(
            cuda::backend_for(buffer.device()).copy_buffer(buffer)?,
        )),
    }
}

/// Waits for every queued kernel of `device` (nothing to wait for on the CPU).
fn synchronize(device: &Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        Device::Cuda(_) | Device::CudaEmu(_) => match device.cuda() {
            Some(cuda) => cuda::backend_for(cuda).synchronize(),
            None => Ok(()),
        },
    }
}

/// The three conv kernels of every geometry.
fn conv_cases<'a>(
    backend: &'a dyn Backend,
    quick: bool,
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<Case<'a>>> {
    let mut cases = Vec::new();
    for spec in conv_specs(quick) {
        let g = spec.geometry;
        let input = [g.batch, g.in_channels, g.in_size[0], g.in_size[1]];
        let output = [g.batch, g.out_channels, g.out_size[0], g.out_size[1]];
        let weight = [
            g.out_channels,
            g.in_channels_per_group(),
            g.kernel[0],
            g.kernel[1],
        ];
        let x = random(&input, rng, device)?;
        let w = random(&weight, rng, device)?;
        let dy = random(&output, rng, device)?;
        let macs = Work::Macs((g.output_len() * g.col_rows()) as f64);
        let (k, s, d) = (g.kernel[0], g.params.stride[0], g.params.dilation[0]);
        let describe = |from: [usize; 4], to: [usize; 4]| {
            let groups = if g.params.groups > 1 {
                format!(" g{}", g.params.groups)
            } else {
                String::new()
            };
            format!(
                "{} → {} k{k} s{s} d{d}{groups}",
                dims_text(&from),
                dims_text(&to)
            )
        };
        // The roles as the layer sees them: a transposed conv runs the adjoint kernels.
        let (fwd_shape, bwd_shape) = if spec.transposed {
            (describe(output, input), describe(output, input))
        } else {
            (describe(input, output), describe(input, output))
        };
        let (xa, wa) = (x.clone(), w.clone());
        let conv: Box<dyn Fn() -> Result<Storage> + 'a> =
            Box::new(move || backend.conv2d(&xa, &wa, None, g));
        let (dya, wb) = (dy.clone(), w.clone());
        let dgrad: Box<dyn Fn() -> Result<Storage> + 'a> =
            Box::new(move || backend.conv2d_input_backward(&dya, &wb, g));
        let wgrad: Box<dyn Fn() -> Result<Storage> + 'a> =
            Box::new(move || backend.conv2d_weight_backward(&dy, &x, g));
        let (fwd, input_grad) = if spec.transposed {
            (dgrad, conv)
        } else {
            (conv, dgrad)
        };
        for (role, run, shape) in [
            ("fwd", fwd, &fwd_shape),
            ("dgrad", input_grad, &bwd_shape),
            ("wgrad", wgrad, &bwd_shape),
        ] {
            cases.push(Case {
                name: format!("{}_{role}", spec.label),
                shape: shape.clone(),
                work: macs,
                run,
            });
        }
    }
    Ok(cases)
}

/// Batch norm, bilinear ×2 and max pool 2×2 forward and backward on one `[N, C, H, W]` map.
fn memory_cases<'a>(
    backend: &'a dyn Backend,
    map: [usize; 4],
    rng: &mut Rng,
    device: &Device,
) -> Result<Vec<Case<'a>>> {
    let [n, c, h, w] = map;
    let len = n * c * h * w;
    let bytes = |floats: usize| Work::Bytes((4 * floats) as f64);
    let shape = dims_text(&map);
    let x = random(&map, rng, device)?;
    let g = random(&map, rng, device)?;
    let scale = random(&[c], rng, device)?;
    let shift = random(&[c], rng, device)?;
    let layout = ChannelLayout {
        outer: n,
        channels: c,
        inner: h * w,
    };
    let eps = 1e-5;
    let (mean, var) = backend.batch_norm_statistics(&x, layout)?;
    let mut cases: Vec<Case<'a>> = Vec::new();
    let (xa, sa, ba) = (x.clone(), scale.clone(), shift.clone());
    cases.push(Case {
        name: "bn_fwd".into(),
        shape: format!("{shape} train"),
        work: bytes(2 * len),
        run: Box::new(move || {
            let (mean, var) = backend.batch_norm_statistics(&xa, layout)?;
            backend.batch_norm_forward(&xa, &mean, &var, Some(&sa), Some(&ba), layout, eps)
        }),
    });
    let (xb, gb) = (x.clone(), g.clone());
    cases.push(Case {
        name: "bn_bwd".into(),
        shape: format!("{shape} train"),
        work: bytes(3 * len),
        run: Box::new(move || {
            backend
                .batch_norm_backward(&xb, &gb, &mean, &var, Some(&scale), layout, eps, true)
                .map(|grads| grads.input)
        }),
    });

    let up = InterpolateGeometry {
        planes: n * c,
        input: [h, w],
        output: [2 * h, 2 * w],
        scales: [Some(2.0); 2],
        mode: InterpolateMode::Bilinear {
            align_corners: false,
        },
    };
    let up_shape = format!("{shape} → {}", dims_text(&[n, c, 2 * h, 2 * w]));
    let xc = x.clone();
    cases.push(Case {
        name: "bilinear_x2_fwd".into(),
        shape: up_shape.clone(),
        work: bytes(5 * len),
        run: Box::new(move || backend.interpolate(&xc, up)),
    });
    let g_up = random(&[n, c, 2 * h, 2 * w], rng, device)?;
    cases.push(Case {
        name: "bilinear_x2_bwd".into(),
        shape: up_shape,
        work: bytes(5 * len),
        run: Box::new(move || backend.interpolate_backward(&g_up, up)),
    });

    let pool = Pool2dGeometry {
        planes: n * c,
        input: [h, w],
        output: [h / 2, w / 2],
        kernel: [2, 2],
        stride: [2, 2],
        padding: [0, 0],
        dilation: [1, 1],
    };
    let pooled = n * c * (h / 2) * (w / 2);
    let pool_shape = format!("{shape} → {}", dims_text(&[n, c, h / 2, w / 2]));
    let (_, indices) = backend.max_pool2d_with_indices(&x, pool)?;
    cases.push(Case {
        name: "maxpool2x2_fwd".into(),
        shape: format!("{pool_shape} +indices"),
        work: bytes(len + 2 * pooled),
        run: Box::new(move || backend.max_pool2d_with_indices(&x, pool).map(|(v, _)| v)),
    });
    let g_pool = random(&[n, c, h / 2, w / 2], rng, device)?;
    cases.push(Case {
        name: "maxpool2x2_bwd".into(),
        shape: pool_shape,
        work: bytes(2 * pooled + len),
        run: Box::new(move || backend.max_pool2d_with_indices_backward(&g_pool, &indices, pool)),
    });
    Ok(cases)
}

/// Times one case: warm-up, then `repeats` runs, each ending with a stream synchronize.
fn measure(case: &Case<'_>, repeats: usize, device: &Device) -> Result<Measured> {
    let ms = time_runs(repeats, || {
        let out = (case.run)()?;
        synchronize(device)?;
        drop(out);
        Ok(())
    })?;
    Ok(Measured {
        name: case.name.clone(),
        shape: case.shape.clone(),
        work: case.work,
        ms,
    })
}

/// The device named by `--device`, with a header describing it. A device that cannot be used
/// is one line of error (the first line of the driver report), not the whole search report.
fn open_device(request: &str) -> Result<(Device, String)> {
    open_device_detailed(request).map_err(|e| {
        let first = first_line(&e.to_string());
        Error::Unsupported(format!(
            "bench ops --device {request}: {first} (use --device cpu, or `moeseg verify` for details)"
        ))
    })
}

/// The first line of a (possibly multi-line) driver report, without a trailing `looked in:`.
fn first_line(text: &str) -> String {
    let first = text.lines().next().unwrap_or_default();
    first
        .trim_end_matches("looked in:")
        .trim_end_matches([';', ' '])
        .to_string()
}

/// [`open_device`] with the full error.
fn open_device_detailed(request: &str) -> Result<(Device, String)> {
    let (device, fallback) = Device::select(request)?;
    let description = match &device {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) | Device::CudaEmu(_) => match device.cuda() {
            Some(cuda) => format!("{cuda} ({})", cuda::backend_for(cuda).describe()?),
            None => device.to_string(),
        },
    };
    let description = match fallback {
        Some(reason) => format!(
            "{description}; auto fell back to the CPU: {}",
            first_line(&reason)
        ),
        None => description,
    };
    Ok((device, description))
}

/// Runs `moeseg bench ops`.
pub fn run(args: &OpsArgs) -> Result<()> {
    if args.repeats == 0 {
        return Err(Error::invalid("bench ops", "--repeats must be positive"));
    }
    let (device, description) = open_device(&args.device)?;
    let backend = device.backend();
    let mut rng = Rng::new(args.seed);
    let map = if args.quick {
        [1, 16, 32, 64]
    } else {
        [2, 64, 128, 256]
    };

    let mut cases = conv_cases(backend, args.quick, &mut rng, &device)?;
    cases.extend(memory_cases(backend, map, &mut rng, &device)?);
    if let Some(filter) = &args.op {
        let names: Vec<String> = cases.iter().map(|c| c.name.clone()).collect();
        cases.retain(|c| c.name.contains(filter.as_str()));
        if cases.is_empty() && !"copy".contains(filter.as_str()) {
            return Err(Error::invalid(
                "bench ops",
                format!(
                    "--op {filter} matches no row; rows: {}, copy",
                    names.join(", ")
                ),
            ));
        }
    }

    println!(
        "moeseg bench ops: device {description}; median and best of {} runs after one warm-up{}",
        args.repeats,
        if args.quick { ", quick shapes" } else { "" }
    );
    // The bandwidth reference first, on the largest memory-bound map.
    let copy_len = map.iter().product::<usize>();
    let copy_source = random(&map, &mut rng, &device)?;
    let copy_case = Case {
        name: "copy".into(),
        shape: dims_text(&map),
        work: Work::Bytes((8 * copy_len) as f64),
        run: Box::new(|| device_copy(&copy_source)),
    };
    let copy = measure(&copy_case, args.repeats, &device)?;
    let copy_rate = copy.rate();

    println!(
        "\n  {:<22} {:<44} {:>10} {:>10} {:>14} {:>8}",
        "op", "shape", "median ms", "best ms", "rate", "% copy"
    );
    let mut rows = Vec::with_capacity(cases.len() + 1);
    for case in &cases {
        let row = measure(case, args.repeats, &device)?;
        print_row(&row, copy_rate);
        rows.push(row);
    }
    print_row(&copy, copy_rate);
    rows.push(copy);

    let mut summary = format!(
        "bench_ops device={device} quick={} repeats={}",
        u8::from(args.quick),
        args.repeats
    );
    for row in &rows {
        summary.push_str(&format!(
            " {name}_ms={:.4} {name}_{}={:.2}",
            row.ms.median,
            row.unit_key(),
            row.rate(),
            name = row.name
        ));
    }
    println!("\n{summary}");
    Ok(())
}

/// One table row: op, shape, median and best ms, GFLOP/s or GB/s (and % of the copy's GB/s).
fn print_row(row: &Measured, copy_rate: f64) {
    let (rate, share) = match row.work {
        Work::Macs(_) => (format!("{:.2} GFLOP/s", row.rate()), String::from("-")),
        Work::Bytes(_) => (
            format!("{:.2} GB/s", row.rate()),
            format!("{:.1}", 100.0 * row.rate() / copy_rate),
        ),
    };
    println!(
        "  {:<22} {:<44} {:>10.3} {:>10.3} {:>14} {:>8}",
        row.name, row.shape, row.ms.median, row.ms.best, rate, share
    );
}
