//! Is the synthetic set learnable? A small dilated conv net trained for a fixed wall-clock
//! budget on CPU must reach a clearly non-trivial mIoU on held-out scenes. Slow and
//! machine-dependent, so ignored by default:
//! `cargo test --release --test data_learn -- --ignored --nocapture`
//! (`MOESEG_LEARN_SECONDS` sets the budget, 120 by default).

use moeseg::data::*;
use moeseg::nn::ConvOptions;
use moeseg::nn::{
    named_parameters, set_training, ActivationLayer, BatchNorm2d, Conv2d, Module, Sequential,
    Upsample,
};
use moeseg::ops::interpolate::{InterpolateMode, Resize};
use moeseg::ops::loss::CrossEntropyOptions;
use moeseg::optim::{Adam, AdamOptions, Optimizer};
use moeseg::train::metrics::ConfusionMatrix;
use moeseg::Tensor;
use std::sync::Arc;

fn block(net: Sequential, cin: usize, cout: usize, stride: usize, dilation: usize) -> Sequential {
    net.push(
        Conv2d::new(
            cin,
            cout,
            3,
            ConvOptions::new()
                .stride(stride)
                .padding(dilation)
                .dilation(dilation)
                .no_bias(),
        )
        .unwrap(),
    )
    .push(BatchNorm2d::new(cout).unwrap())
    .push(ActivationLayer::relu())
}

#[test]
#[ignore]
fn a_small_net_learns_the_synthetic_scenes() {
    let (h, w) = (64, 128);
    let budget: f64 = std::env::var("MOESEG_LEARN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120.0);
    let train: Arc<dyn Dataset> = Arc::new(Synthetic::new(SyntheticConfig {
        len: 512,
        height: h,
        width: w,
        seed: 1,
    }));
    let val = Synthetic::new(SyntheticConfig {
        len: 32,
        height: h,
        width: w,
        seed: 2,
    });
    let mut net = Sequential::default();
    net = block(net, 3, 16, 2, 1);
    net = block(net, 16, 32, 2, 1);
    net = block(net, 32, 32, 1, 2);
    net = block(net, 32, 32, 1, 4);
    net = block(net, 32, 32, 1, 1);
    let net = net
        .push(Conv2d::new(32, NUM_CLASSES, 1, ConvOptions::new()).unwrap())
        .push(Upsample {
            resize: Resize::Scale([4.0, 4.0]),
            mode: InterpolateMode::Bilinear {
                align_corners: false,
            },
        });
    let weights = enet_class_weights(train.as_ref(), NUM_CLASSES, Some(64)).unwrap();
    let weights =
        Tensor::from_vec(weights.iter().map(|w| w.min(10.0)).collect(), [NUM_CLASSES]).unwrap();
    let mut adam = Adam::with_params(named_parameters(&net), AdamOptions::new(5e-3)).unwrap();
    let augment = AugmentConfig {
        scale: (0.8, 1.25),
        crop: Some([h, w]),
        flip: true,
        color_jitter: 0.2,
    };
    let config = LoaderConfig {
        batch_size: 8,
        shuffle: true,
        augment: Some(augment),
        seed: 3,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(train, config).unwrap();
    let start = std::time::Instant::now();
    let mut step = 0;
    'training: for epoch in 0.. {
        for batch in loader.epoch(epoch) {
            let batch = batch.unwrap();
            let options = CrossEntropyOptions {
                weight: Some(&weights),
                ..CrossEntropyOptions::default()
            };
            let loss = net
                .forward(&batch.images)
                .unwrap()
                .cross_entropy(&batch.labels, options)
                .unwrap();
            if step % 20 == 0 {
                eprintln!(
                    "step {step} epoch {epoch} loss {:.3} ({:.0} s)",
                    loss.item().unwrap(),
                    start.elapsed().as_secs_f64()
                );
            }
            loss.backward().unwrap();
            adam.step().unwrap();
            adam.zero_grad();
            step += 1;
            if start.elapsed().as_secs_f64() > budget {
                break 'training;
            }
        }
    }
    set_training(&net, false);
    let eval = Loader::new(
        Arc::new(val),
        LoaderConfig {
            batch_size: 8,
            ..LoaderConfig::default()
        },
    )
    .unwrap();
    let mut matrix = ConfusionMatrix::new(NUM_CLASSES);
    let _guard = moeseg::NoGradGuard::new();
    for batch in eval.epoch(0) {
        let batch = batch.unwrap();
        matrix
            .update_from_logits(&net.forward(&batch.images).unwrap(), &batch.labels)
            .unwrap();
    }
    eprintln!("{step} steps\n{}", matrix.summary_table(&CLASS_NAMES));
    assert!(matrix.miou() > 0.2, "mIoU {}", matrix.miou());
}
