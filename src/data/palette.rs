//! Class names, the Cityscapes colour palette and the labelId ↔ trainId mappings.

use super::IGNORE_INDEX;

/// Class names in trainId order.
pub const CLASS_NAMES: [&str; 19] = [
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
];

/// The standard Cityscapes colours (RGB) in trainId order.
pub const CITYSCAPES_PALETTE: [[u8; 3]; 19] = [
    [128, 64, 128],
    [244, 35, 232],
    [70, 70, 70],
    [102, 102, 156],
    [190, 153, 153],
    [153, 153, 153],
    [250, 170, 30],
    [220, 220, 0],
    [107, 142, 35],
    [152, 251, 152],
    [70, 130, 180],
    [220, 20, 60],
    [255, 0, 0],
    [0, 0, 142],
    [0, 0, 70],
    [0, 60, 100],
    [0, 80, 100],
    [0, 0, 230],
    [119, 11, 32],
];

/// The Cityscapes labelId of each trainId.
const LABEL_IDS: [u8; 19] = [
    7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33,
];

/// Largest valid Cityscapes labelId (`bicycle`); the PNGs hold `0..=33` (and 255 for `-1`).
pub const MAX_LABEL_ID: u8 = 33;

/// Cityscapes labelId → trainId; ids that are not evaluated (and invalid ids) give 255.
pub fn label_id_to_train_id(label_id: u8) -> u8 {
    LABEL_IDS
        .iter()
        .position(|&id| id == label_id)
        .map_or(IGNORE_INDEX, |t| t as u8)
}

/// trainId → Cityscapes labelId; 255 (and invalid trainIds) give 0 (`unlabeled`).
pub fn train_id_to_label_id(train_id: u8) -> u8 {
    LABEL_IDS.get(train_id as usize).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_ids_round_trip() {
        for t in 0..19u8 {
            assert_eq!(label_id_to_train_id(train_id_to_label_id(t)), t);
        }
        assert_eq!(label_id_to_train_id(train_id_to_label_id(255)), 255);
        assert_eq!(label_id_to_train_id(7), 0);
        assert_eq!(label_id_to_train_id(26), 13);
        assert_eq!(label_id_to_train_id(0), 255);
        assert_eq!(label_id_to_train_id(29), 255);
    }
}
