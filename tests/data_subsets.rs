//! Dataset subsets for expert models: the synthetic scene attribute, `data.require_classes`
//! and `data.class_map` (issue 18).

use moeseg::data::*;

/// FNV-1a over the images and labels of samples `0..n`.
fn fingerprint(set: &dyn Dataset, n: usize) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for i in 0..n {
        let s = set.get(i).unwrap();
        for &b in s
            .image
            .as_raw()
            .iter()
            .chain(s.label.as_deref().unwrap_or(&[]))
        {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn config(len: usize, seed: u64) -> SyntheticConfig {
    SyntheticConfig {
        len,
        height: 48,
        width: 96,
        seed,
    }
}

#[test]
fn default_scene_keeps_the_legacy_images() {
    // Recorded from the generator before scenes existed (commit 73a03e8).
    let set = Synthetic::new(config(6, 3));
    assert_eq!(fingerprint(&set, 6), 0xd5b5_e6da_671b_ab6f);
    let explicit = Synthetic::new(config(6, 3)).with_scenes(&[SceneKind::Mixed]);
    assert_eq!(fingerprint(&explicit, 6), 0xd5b5_e6da_671b_ab6f);
}

/// Share of each class over `n` images of layout `scene`.
fn class_shares(scene: SceneKind, n: usize) -> Vec<f64> {
    let set = Synthetic::new(config(n, 11)).with_scenes(&[scene]);
    let mut counts = [0f64; NUM_CLASSES];
    for i in 0..n {
        for &v in set.get(i).unwrap().label.unwrap().iter() {
            counts[v as usize] += 1.0;
        }
    }
    let total: f64 = counts.iter().sum();
    counts.iter().map(|c| c / total).collect()
}

#[test]
fn urban_and_highway_layouts_have_different_class_statistics() {
    let urban = class_shares(SceneKind::Urban, 24);
    let highway = class_shares(SceneKind::Highway, 24);
    let (road, sidewalk, building, person) = (0, 1, 2, 11);
    assert!(highway[road] > 1.3 * urban[road], "{urban:?} {highway:?}");
    assert!(
        urban[sidewalk] > 3.0 * highway[sidewalk],
        "{urban:?} {highway:?}"
    );
    assert!(
        urban[building] > 1.5 * highway[building],
        "{urban:?} {highway:?}"
    );
    assert!(urban[person] > 0.0 && highway[person] == 0.0);
    // Alternating list: even samples urban, odd highway, each equal to the single-scene set.
    let both =
        Synthetic::new(config(4, 11)).with_scenes(&SceneKind::parse_list("urban+highway").unwrap());
    let urban_set = Synthetic::new(config(4, 11)).with_scenes(&[SceneKind::Urban]);
    let highway_set = Synthetic::new(config(4, 11)).with_scenes(&[SceneKind::Highway]);
    assert_eq!(both.get(2).unwrap(), urban_set.get(2).unwrap());
    assert_eq!(both.get(3).unwrap(), highway_set.get(3).unwrap());
    assert_ne!(
        both.get(2).unwrap().image,
        highway_set.get(2).unwrap().image
    );
    let err = SceneKind::parse_list("urban+desert")
        .unwrap_err()
        .to_string();
    assert!(err.contains("desert"), "{err}");
}

#[test]
fn require_classes_keeps_exactly_the_images_with_enough_pixels() {
    let inner = Synthetic::new(config(16, 5));
    let min = 40;
    let require = RequireClasses::parse(&["truck".into(), "bus".into()], min).unwrap();
    let subset = Subset::new(std::sync::Arc::new(inner.clone()), require, None).unwrap();
    // Hand count over the raw images.
    let expected: Vec<String> = (0..16)
        .filter(|&i| {
            let label = inner.get(i).unwrap().label.unwrap();
            label.iter().filter(|&&v| v == 14 || v == 15).count() >= min
        })
        .map(|i| inner.id(i))
        .collect();
    assert!(!expected.is_empty() && expected.len() < 16, "{expected:?}");
    let got: Vec<String> = (0..subset.len())
        .map(|i| subset.get(i).unwrap().id)
        .collect();
    assert_eq!(got, expected);
    // Nothing qualifies: a clear error.
    let none = RequireClasses::parse(&["train".into()], 1_000_000).unwrap();
    let err = Subset::new(std::sync::Arc::new(inner), none, None)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("data.require_classes"), "{err}");
}

#[test]
fn class_map_merges_and_drops_classes() {
    let groups = ["car+truck+bus".to_string(), "person+rider".to_string()];
    let other = ClassMap::parse(&groups, "other").unwrap().unwrap();
    assert_eq!(other.num_classes(), 3);
    assert_eq!(other.names, ["car+truck+bus", "person+rider", "other"]);
    let ignore = ClassMap::parse(&groups, "ignore").unwrap().unwrap();
    let inner = Synthetic::new(config(3, 9));
    let mapped = Subset::new(std::sync::Arc::new(inner.clone()), None, Some(&ignore)).unwrap();
    let mapped_other = Subset::new(std::sync::Arc::new(inner.clone()), None, Some(&other)).unwrap();
    for i in 0..3 {
        let raw = inner.get(i).unwrap().label.unwrap();
        let a = mapped.get(i).unwrap().label.unwrap();
        let b = mapped_other.get(i).unwrap().label.unwrap();
        for ((&r, &a), &b) in raw.iter().zip(&a).zip(&b) {
            let want = match r {
                13..=15 => 0,
                11 | 12 => 1,
                _ => 255,
            };
            assert_eq!(a, want);
            assert_eq!(b, if want == 255 { 2 } else { want });
        }
    }
    for (groups, rest, key) in [
        (vec!["car+car".to_string()], "ignore", "more than one group"),
        (vec!["car+plane".to_string()], "ignore", "plane"),
        (vec!["car".to_string()], "keep", "class_map_rest"),
    ] {
        let err = ClassMap::parse(&groups, rest).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn filters_apply_to_cityscapes_and_bdd100k_through_the_config() {
    use moeseg::train::config::DataConfig;
    use moeseg::train::setup::open_dataset;
    let source = Synthetic::new(config(8, 21));
    let tmp = std::env::temp_dir().join(format!("moeseg-subsets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (cs, bdd) = (tmp.join("cs"), tmp.join("bdd"));
    write_cityscapes(&source, &cs, Split::Val, "aachen").unwrap();
    write_bdd100k(&source, &bdd, Split::Val).unwrap();
    let want: Vec<Vec<u8>> = (0..8)
        .map(|i| source.get(i).unwrap().label.unwrap())
        .filter(|l| l.iter().filter(|&&v| v == 11).count() >= 20)
        .map(|l| l.iter().map(|&v| if v == 11 { 0 } else { 1 }).collect())
        .collect();
    assert!(!want.is_empty() && want.len() < 8, "{} of 8", want.len());
    for (name, root) in [("cityscapes", &cs), ("bdd100k", &bdd)] {
        let data = DataConfig {
            dataset: name.into(),
            root: root.display().to_string(),
            require_classes: vec!["person".into()],
            require_min_pixels: 20,
            class_map: vec!["person".into()],
            class_map_rest: "other".into(),
            ..DataConfig::default()
        };
        let set = open_dataset(&data, "val", false).unwrap();
        let got: Vec<Vec<u8>> = (0..set.len())
            .map(|i| set.get(i).unwrap().label.unwrap())
            .collect();
        assert_eq!(got, want, "{name}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
