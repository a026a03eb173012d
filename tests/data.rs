//! Datasets: synthetic scenes, the on-disk readers (fixtures written from the synthetic set),
//! their errors, augmentations and the loader.

use moeseg::data::augment::{augment, prepare, AugmentConfig, Prepared};
use moeseg::data::pictures::{colorize, routing_overlay, save_label_png, save_png};
use moeseg::data::*;
use std::path::Path;
use std::sync::Arc;

fn synthetic(len: usize, height: usize, width: usize, seed: u64) -> Synthetic {
    Synthetic::new(SyntheticConfig {
        len,
        height,
        width,
        seed,
    })
}

fn err_text<T: std::fmt::Debug>(r: moeseg::Result<T>) -> String {
    r.expect_err("expected an error").to_string()
}

#[test]
fn synthetic_is_deterministic_and_seed_dependent() {
    let a = synthetic(4, 64, 128, 7);
    let b = synthetic(4, 64, 128, 7);
    let c = synthetic(4, 64, 128, 8);
    for i in 0..4 {
        let (sa, sb, sc) = (a.get(i).unwrap(), b.get(i).unwrap(), c.get(i).unwrap());
        assert_eq!(sa, sb);
        assert_ne!(sa.image, sc.image);
        assert_eq!(sa.id, a.id(i));
        assert_eq!(sa.label.as_ref().unwrap().len(), 64 * 128);
    }
    assert_ne!(a.get(0).unwrap().image, a.get(1).unwrap().image);
    assert!(a.get(4).is_err());
}

#[test]
fn synthetic_covers_all_classes_with_plausible_frequencies() {
    let set = synthetic(64, 128, 256, 0);
    let mut counts = [0u64; NUM_CLASSES];
    for i in 0..set.len() {
        for &v in set.get(i).unwrap().label.unwrap().iter() {
            assert!((v as usize) < NUM_CLASSES, "label {v}");
            counts[v as usize] += 1;
        }
    }
    for (c, &n) in counts.iter().enumerate() {
        assert!(n > 0, "class {} never appears", CLASS_NAMES[c]);
    }
    // The big stuff classes dominate, as in Cityscapes.
    let big = |c: usize| counts[c];
    let min_big = [0, 2, 8, 10].iter().map(|&c| big(c)).min().unwrap();
    for small in [5, 6, 7, 11, 12, 16, 17, 18] {
        assert!(
            counts[small] < min_big,
            "{} too frequent",
            CLASS_NAMES[small]
        );
    }
    eprintln!("class pixel counts: {counts:?}");
}

#[test]
fn cityscapes_round_trip_through_label_ids() {
    let dir = tempfile::tempdir().unwrap();
    let source = synthetic(3, 32, 64, 3);
    write_cityscapes(&source, dir.path(), Split::Val, "testcity").unwrap();
    let label_file = dir
        .path()
        .join("gtFine/val/testcity/testcity_000001_000019_gtFine_labelIds.png");
    assert!(label_file.is_file());
    let read = Cityscapes::open(dir.path(), Split::Val).unwrap();
    assert_eq!(read.len(), 3);
    assert_eq!(read.skipped(), 0);
    for i in 0..3 {
        let (a, b) = (source.get(i).unwrap(), read.get(i).unwrap());
        assert_eq!(b.id, format!("testcity_{i:06}_000019"));
        assert_eq!(read.id(i), b.id);
        assert_eq!(a.image, b.image, "PNG is lossless");
        assert_eq!(a.label, b.label, "labelId → trainId round trip");
    }
    assert!(read.describe().contains("Cityscapes val"));
}

#[test]
fn cityscapes_prefers_label_train_ids() {
    let dir = tempfile::tempdir().unwrap();
    write_cityscapes(&synthetic(1, 8, 8, 1), dir.path(), Split::Train, "c").unwrap();
    let path = dir
        .path()
        .join("gtFine/train/c/c_000000_000019_gtFine_labelTrainIds.png");
    let labels: Vec<u8> = (0..64)
        .map(|i| if i % 5 == 0 { 255 } else { (i % 19) as u8 })
        .collect();
    save_label_png(&labels, 8, 8, &path).unwrap();
    let read = Cityscapes::open(dir.path(), Split::Train).unwrap();
    assert_eq!(read.get(0).unwrap().label.unwrap(), labels);
}

#[test]
fn bdd100k_round_trip_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let source = synthetic(3, 32, 48, 4);
    write_bdd100k(&source, dir.path(), Split::Train).unwrap();
    let read = Bdd100k::open(dir.path(), Split::Train).unwrap();
    assert_eq!(read.len(), 3);
    for i in 0..3 {
        let (a, b) = (source.get(i).unwrap(), read.get(i).unwrap());
        assert_eq!(a.id, b.id);
        assert_eq!(a.label, b.label);
        assert_eq!(a.image.dimensions(), b.image.dimensions());
        // JPEG is lossy, but close.
        let diff: f64 = a
            .image
            .as_raw()
            .iter()
            .zip(b.image.as_raw())
            .map(|(&x, &y)| (x as f64 - y as f64).abs())
            .sum::<f64>()
            / a.image.as_raw().len() as f64;
        assert!(diff < 12.0, "mean JPEG error {diff}");
    }
    // The older layout: seg/images/<split>/*.jpg with seg/labels/<split>/*_train_id.png.
    let old = tempfile::tempdir().unwrap();
    let (images, labels) = (
        old.path().join("seg/images/val"),
        old.path().join("seg/labels/val"),
    );
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    let sample = source.get(0).unwrap();
    std::fs::copy(
        dir.path().join("images/10k/train/synthetic_000000.jpg"),
        images.join("a.jpg"),
    )
    .unwrap();
    save_label_png(
        sample.label.as_ref().unwrap(),
        32,
        48,
        &labels.join("a_train_id.png"),
    )
    .unwrap();
    let read = Bdd100k::open(old.path(), Split::Val).unwrap();
    assert_eq!(read.len(), 1);
    assert_eq!(read.get(0).unwrap().label, sample.label);
}

#[test]
fn test_split_without_labels_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let unlabeled = UnlabeledSet(synthetic(2, 8, 8, 0));
    write_cityscapes(&unlabeled, dir.path(), Split::Test, "berlin").unwrap();
    let read = Cityscapes::open(dir.path(), Split::Test).unwrap();
    assert_eq!(read.get(1).unwrap().label, None);
}

/// A dataset whose samples have no labels.
struct UnlabeledSet(Synthetic);

impl Dataset for UnlabeledSet {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> moeseg::Result<Sample> {
        Ok(Sample {
            label: None,
            ..self.0.get(index)?
        })
    }
    fn id(&self, index: usize) -> String {
        self.0.id(index)
    }
    fn describe(&self) -> String {
        "unlabelled".into()
    }
}

#[test]
fn reader_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // Missing root and missing split folder.
    let msg = err_text(Cityscapes::open(&root.join("nowhere"), Split::Train));
    assert!(
        msg.contains("nowhere") && msg.contains("missing folder"),
        "{msg}"
    );
    std::fs::create_dir_all(root.join("leftImg8bit")).unwrap();
    let msg = err_text(Cityscapes::open(root, Split::Train));
    assert!(msg.contains("leftImg8bit/train"), "{msg}");
    let msg = err_text(Bdd100k::open(root, Split::Train));
    assert!(msg.contains("not a BDD100K root"), "{msg}");

    // An image without a label: an error naming it, or a counted skip.
    write_cityscapes(&synthetic(2, 8, 8, 0), root, Split::Train, "x").unwrap();
    let missing = root.join("gtFine/train/x/x_000001_000019_gtFine_labelIds.png");
    std::fs::remove_file(&missing).unwrap();
    let msg = err_text(Cityscapes::open(root, Split::Train));
    assert!(
        msg.contains("x_000001_000019_leftImg8bit.png") && msg.contains("image without label"),
        "{msg}"
    );
    let opts = OpenOptions {
        skip_unlabeled: true,
    };
    let read = Cityscapes::open_with(root, Split::Train, opts).unwrap();
    assert_eq!((read.len(), read.skipped()), (1, 1));

    // A label of the wrong size, detected when the sample is read.
    save_label_png(&[7; 12], 3, 4, &missing).unwrap();
    let read = Cityscapes::open(root, Split::Train).unwrap();
    let msg = err_text(read.get(1));
    assert!(
        msg.contains("x_000001_000019_gtFine_labelIds.png") && msg.contains("4×3"),
        "{msg}"
    );

    // Unknown label ids: 34 is no Cityscapes labelId, 19 is no trainId.
    save_label_png(&[34; 64], 8, 8, &missing).unwrap();
    let msg = err_text(read.get(1));
    assert!(
        msg.contains("unknown label id 34") && msg.contains("gtFine_labelIds.png"),
        "{msg}"
    );
    let bdd = tempfile::tempdir().unwrap();
    write_bdd100k(&synthetic(1, 8, 8, 0), bdd.path(), Split::Val).unwrap();
    let mask = bdd
        .path()
        .join("labels/sem_seg/masks/val/synthetic_000000.png");
    save_label_png(&[19; 64], 8, 8, &mask).unwrap();
    let msg = err_text(Bdd100k::open(bdd.path(), Split::Val).unwrap().get(0));
    assert!(
        msg.contains("unknown label id 19") && msg.contains("synthetic_000000.png"),
        "{msg}"
    );
    // A corrupt image.
    std::fs::write(
        bdd.path().join("images/10k/val/synthetic_000000.jpg"),
        b"not a jpeg",
    )
    .unwrap();
    let msg = err_text(Bdd100k::open(bdd.path(), Split::Val).unwrap().get(0));
    assert!(msg.contains("synthetic_000000.jpg"), "{msg}");
}

fn sample_with(label: Vec<u8>, h: u32, w: u32) -> Sample {
    let image = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 10) as u8, 128])
    });
    Sample {
        id: "s".into(),
        image,
        label: Some(label),
    }
}

#[test]
fn normalisation_is_imagenet() {
    let mut sample = sample_with(vec![3; 4], 2, 2);
    sample.image = image::RgbImage::from_pixel(2, 2, image::Rgb([255, 0, 128]));
    let p = prepare(&sample, None).unwrap();
    let expected = [
        (1.0 - 0.485) / 0.229,
        (0.0 - 0.456) / 0.224,
        (128.0 / 255.0 - 0.406) / 0.225,
    ];
    for (plane, e) in p.image.chunks(4).zip(expected) {
        for v in plane {
            assert!((v - e).abs() < 1e-5, "{v} vs {e}");
        }
    }
    assert_eq!(p.label, vec![3; 4]);
}

#[test]
fn augmentation_invariants() {
    let set = synthetic(4, 48, 96, 5);
    let config = AugmentConfig {
        scale: (0.5, 2.0),
        crop: Some([64, 80]),
        flip: true,
        color_jitter: 0.4,
    };
    for i in 0..4 {
        let sample = set.get(i).unwrap();
        for seed in 0..6u64 {
            let a = augment(&sample, &config, None, seed).unwrap();
            assert_eq!((a.height, a.width), (64, 80));
            assert_eq!(a.image.len(), 3 * 64 * 80);
            assert!(a.label.iter().all(|&v| v < 19 || v == 255));
            assert!(a.image.iter().all(|v| v.is_finite()));
            assert_eq!(
                a,
                augment(&sample, &config, None, seed).unwrap(),
                "deterministic"
            );
        }
    }
    // Padding: a crop larger than the image pads with label 255 and image 0.
    let sample = set.get(0).unwrap();
    let small = AugmentConfig {
        scale: (1.0, 1.0),
        crop: Some([60, 100]),
        flip: false,
        color_jitter: 0.0,
    };
    let a = augment(&sample, &small, None, 1).unwrap();
    let labelled = a.label.iter().filter(|&&v| v != 255).count();
    assert_eq!(labelled, 48 * 96);
    assert!(a.image.iter().filter(|&&v| v == 0.0).count() >= 3 * (60 * 100 - 48 * 96));
    // Flip twice is the identity; once mirrors.
    let p = prepare(&sample, None).unwrap();
    let mut q = p.clone();
    q.flip_horizontal();
    assert_ne!(p, q);
    assert_eq!(q.label[0], p.label[95]);
    q.flip_horizontal();
    assert_eq!(p, q);
    // Resize: nearest labels keep only existing values, sizes as asked.
    let r: Prepared = p.resize(20, 30);
    assert_eq!(
        (r.height, r.width, r.label.len(), r.image.len()),
        (20, 30, 600, 1800)
    );
    // Resampling a window equals resizing everything, then cutting the window out; outside
    // the picture, padding (image 0, label 255).
    let full = p.resize(70, 130);
    let window = Window {
        top: -3,
        left: 100,
        height: 20,
        width: 40,
    };
    let cut = p.resample([70, 130], window);
    for y in 0..20 {
        for x in 0..40 {
            let (sy, sx) = (y as isize - 3, x as isize + 100);
            let i = y * 40 + x;
            if sy < 0 || sx >= 130 {
                assert_eq!((cut.label[i], cut.image[i]), (255, 0.0));
            } else {
                let j = sy as usize * 130 + sx as usize;
                assert_eq!(cut.label[i], full.label[j]);
                for c in 0..3 {
                    assert!((cut.image[c * 800 + i] - full.image[c * 70 * 130 + j]).abs() < 1e-6);
                }
            }
        }
    }
    let bad = AugmentConfig {
        scale: (0.0, 1.0),
        ..AugmentConfig::default()
    };
    assert!(augment(&sample, &bad, None, 0).is_err());
}

fn collect(loader: &Loader, epoch: usize) -> Vec<(Vec<f32>, Vec<f32>, Vec<String>)> {
    loader
        .epoch(epoch)
        .map(|b| {
            let b = b.unwrap();
            (
                b.images.try_to_vec().unwrap(),
                b.labels.try_to_vec().unwrap(),
                b.ids,
            )
        })
        .collect()
}

#[test]
fn loader_is_deterministic_with_prefetch_and_thread_pools() {
    let set: Arc<dyn Dataset> = Arc::new(synthetic(10, 32, 48, 9));
    let config = LoaderConfig {
        batch_size: 4,
        shuffle: true,
        drop_last: false,
        augment: Some(AugmentConfig {
            crop: Some([24, 40]),
            color_jitter: 0.2,
            ..AugmentConfig::default()
        }),
        resize: None,
        seed: 42,
        prefetch: 3,
    };
    let a = Loader::new(set.clone(), config.clone()).unwrap();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let b = Loader::new(
        set.clone(),
        LoaderConfig {
            prefetch: 0,
            ..config.clone()
        },
    )
    .unwrap()
    .with_thread_pool(Arc::new(one_thread));
    assert_eq!(a.batches_per_epoch(), 3);
    let (ea, eb) = (collect(&a, 0), collect(&b, 0));
    assert_eq!(ea.len(), 3);
    assert_eq!(ea, eb);
    assert_eq!(ea[2].2.len(), 2, "last batch is partial");
    let mut ids: Vec<String> = ea.iter().flat_map(|e| e.2.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10, "every sample once");
    let e1 = collect(&a, 1);
    assert_ne!(ea[0].2, e1[0].2, "another epoch, another order");
    // Resuming mid-epoch gives the same remaining batches.
    let resumed: Vec<_> = a.epoch_from(0, 1).map(|b| b.unwrap().ids).collect();
    assert_eq!(resumed, vec![ea[1].2.clone(), ea[2].2.clone()]);
    // Batch layout.
    let batch = a.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.images.dims(), &[4, 3, 24, 40]);
    assert_eq!(batch.labels.dims(), &[4, 24, 40]);
    let drop = Loader::new(
        set,
        LoaderConfig {
            drop_last: true,
            ..config
        },
    )
    .unwrap();
    assert_eq!(drop.batches_per_epoch(), 2);
    assert_eq!(drop.epoch(0).count(), 2);
}

#[test]
fn loader_rejects_mixed_sizes_naming_the_ids() {
    let dir = tempfile::tempdir().unwrap();
    write_cityscapes(&synthetic(1, 16, 16, 0), dir.path(), Split::Val, "a").unwrap();
    write_cityscapes(&synthetic(1, 16, 24, 0), dir.path(), Split::Val, "b").unwrap();
    let set: Arc<dyn Dataset> = Arc::new(Cityscapes::open(dir.path(), Split::Val).unwrap());
    let config = LoaderConfig {
        batch_size: 2,
        ..LoaderConfig::default()
    };
    let loader = Loader::new(set.clone(), config.clone()).unwrap();
    let msg = err_text(loader.epoch(0).next().unwrap());
    assert!(
        msg.contains("a_000000_000019") && msg.contains("b_000000_000019"),
        "{msg}"
    );
    let resized = Loader::new(
        set,
        LoaderConfig {
            resize: Some([8, 12]),
            ..config
        },
    )
    .unwrap();
    let batch = resized.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.images.dims(), &[2, 3, 8, 12]);
}

#[test]
fn enet_class_weights_by_hand() {
    // Two 2×2 samples: labels [0,0,1,255] and [0,2,2,2] → 7 labelled pixels:
    // p0 = 3/7, p1 = 1/7, p2 = 3/7, p3 = 0 → w = 1/ln(1.02 + p).
    let set = Fixed(vec![vec![0, 0, 1, 255], vec![0, 2, 2, 2]]);
    let w = enet_class_weights(&set, 4, None).unwrap();
    let expected = [3.0 / 7.0, 1.0 / 7.0, 3.0 / 7.0, 0.0].map(|p: f64| 1.0 / (1.02 + p).ln());
    for (a, b) in w.iter().zip(expected) {
        assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
    }
    // 1/ln(1.02) ≈ 50.50 for an absent class.
    assert!((w[3] - 50.498).abs() < 0.01);
    // With one sample: p0 = 2/3, p1 = 1/3.
    let w = enet_class_weights(&set, 2, Some(1)).unwrap();
    assert!((w[0] as f64 - 1.0 / (1.02f64 + 2.0 / 3.0).ln()).abs() < 1e-5);
    assert!(enet_class_weights(&Fixed(vec![vec![255; 4]]), 2, None).is_err());
}

/// 2×2 samples with given labels.
struct Fixed(Vec<Vec<u8>>);

impl Dataset for Fixed {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> moeseg::Result<Sample> {
        Ok(sample_with(self.0[index].clone(), 2, 2))
    }
    fn id(&self, index: usize) -> String {
        index.to_string()
    }
    fn describe(&self) -> String {
        "fixed".into()
    }
}

#[test]
fn pictures() {
    let labels = vec![0, 13, 255, 10];
    let img = colorize(&labels, 2, 2);
    assert_eq!(img.get_pixel(0, 0).0, CITYSCAPES_PALETTE[0]);
    assert_eq!(img.get_pixel(1, 0).0, [0, 0, 142]);
    assert_eq!(img.get_pixel(0, 1).0, [0, 0, 0]);
    let base = image::RgbImage::from_pixel(64, 32, image::Rgb([100, 100, 100]));
    let overlay = routing_overlay(
        &base,
        2,
        4,
        &(0..8).map(|i| vec![i % 3, (i + 1) % 3]).collect::<Vec<_>>(),
        3,
    );
    assert_eq!(overlay.dimensions(), (64, 32));
    assert_ne!(
        overlay.get_pixel(8, 12),
        overlay.get_pixel(24, 12),
        "different top experts"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/overlay.png");
    save_png(&overlay, &path).unwrap();
    assert_eq!(image::open(&path).unwrap().to_rgb8(), overlay);
}

/// Generator speed and a preview (`MOESEG_PREVIEW=dir cargo test --release --test data -- --ignored`).
#[test]
#[ignore]
fn synthetic_speed_and_preview() {
    for (h, w) in [(128, 256), (512, 1024)] {
        let set = synthetic(16, h, w, 0);
        let start = std::time::Instant::now();
        for i in 0..16 {
            set.get(i).unwrap();
        }
        eprintln!(
            "{h}×{w}: {:.2} ms per image",
            start.elapsed().as_secs_f64() * 1e3 / 16.0
        );
    }
    if let Ok(dir) = std::env::var("MOESEG_PREVIEW") {
        let set = synthetic(8, 256, 512, 0);
        for i in 0..8 {
            let s = set.get(i).unwrap();
            let dir = Path::new(&dir);
            let experts: Vec<Vec<usize>> = (0..32)
                .map(|p| vec![(p * 7 + i) % 8, (p * 3 + 1) % 8])
                .collect();
            let overlay = routing_overlay(&s.image, 4, 8, &experts, 8);
            save_png(&overlay, &dir.join(format!("{i}_routing.png"))).unwrap();
            save_png(&s.image, &dir.join(format!("{i}_image.png"))).unwrap();
            save_png(
                &colorize(s.label.as_ref().unwrap(), 256, 512),
                &dir.join(format!("{i}_label.png")),
            )
            .unwrap();
        }
    }
}

/// Fails on one index, to check that errors reach the consumer.
struct Broken(Synthetic, usize);

impl Dataset for Broken {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn get(&self, index: usize) -> moeseg::Result<Sample> {
        if index == self.1 {
            return Err(moeseg::Error::file(
                format!("broken_{index}.png"),
                "cannot decode",
            ));
        }
        self.0.get(index)
    }
    fn id(&self, index: usize) -> String {
        self.0.id(index)
    }
    fn describe(&self) -> String {
        "broken".into()
    }
}

#[test]
fn loader_errors_reach_the_consumer_and_end_the_epoch() {
    for prefetch in [0, 2] {
        let set: Arc<dyn Dataset> = Arc::new(Broken(synthetic(6, 8, 8, 0), 3));
        let config = LoaderConfig {
            batch_size: 2,
            prefetch,
            ..LoaderConfig::default()
        };
        let results: Vec<_> = Loader::new(set, config).unwrap().epoch(0).collect();
        assert_eq!(results.len(), 2, "prefetch {prefetch}");
        assert!(results[0].is_ok());
        assert!(results[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("broken_3.png"));
    }
    assert!(Loader::new(Arc::new(synthetic(0, 8, 8, 0)), LoaderConfig::default()).is_err());
    let zero = LoaderConfig {
        batch_size: 0,
        ..LoaderConfig::default()
    };
    assert!(Loader::new(Arc::new(synthetic(2, 8, 8, 0)), zero).is_err());
}
