//! Subsets of a dataset for expert models (`data.require_classes`, `data.class_map`): the
//! images that contain enough pixels of some classes, and labels with classes merged or
//! dropped. Any [`Dataset`] can be wrapped (synthetic, Cityscapes, BDD100K).

use super::{Dataset, Sample, CLASS_NAMES, IGNORE_INDEX};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// A trainId from a class name (`car`, `traffic light` or `traffic_light`) or a number.
pub fn parse_class(key: &'static str, text: &str) -> Result<u8> {
    let word = text.trim().replace('_', " ");
    if let Some(i) = CLASS_NAMES.iter().position(|n| *n == word) {
        return Ok(i as u8);
    }
    match word.parse::<u8>() {
        Ok(id) if id != IGNORE_INDEX => Ok(id),
        _ => Err(Error::invalid(
            key,
            format!(
                "`{text}` is neither a class name ({}) nor a trainId 0..254",
                CLASS_NAMES.join(", ")
            ),
        )),
    }
}

/// What a class map does with the classes no group names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rest {
    /// They become the ignore label (255): not trained on, not evaluated.
    Ignore,
    /// They become one extra class `other`, the last id.
    Other,
}

/// Merges classes into groups: group `g` (a `+`-joined list of class names or ids) becomes
/// class `g`; the rest is ignored or becomes `other` (class `groups.len()`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassMap {
    /// The original trainIds of each new class.
    pub groups: Vec<Vec<u8>>,
    /// The names of the new classes (the group texts, then `other`).
    pub names: Vec<String>,
    /// What the other classes become.
    pub rest: Rest,
}

impl ClassMap {
    /// Parses `data.class_map` (e.g. `["car+truck+bus", "person+rider"]`) and
    /// `data.class_map_rest` (`ignore` or `other`). `None` for an empty list. A class in two
    /// groups is an error.
    pub fn parse(groups: &[String], rest: &str) -> Result<Option<ClassMap>> {
        if groups.is_empty() {
            return Ok(None);
        }
        let rest = match rest {
            "ignore" => Rest::Ignore,
            "other" => Rest::Other,
            other => {
                return Err(Error::invalid(
                    "data.class_map_rest",
                    format!("`{other}`: expected ignore or other"),
                ))
            }
        };
        let mut seen = [false; 256];
        let mut parsed = Vec::new();
        for group in groups {
            let ids = group
                .split('+')
                .map(|word| parse_class("data.class_map", word))
                .collect::<Result<Vec<u8>>>()?;
            for &id in &ids {
                if std::mem::replace(&mut seen[id as usize], true) {
                    return Err(Error::invalid(
                        "data.class_map",
                        format!("class {id} is in more than one group of {groups:?}"),
                    ));
                }
            }
            parsed.push(ids);
        }
        let mut names: Vec<String> = groups.iter().map(|g| g.trim().to_string()).collect();
        if rest == Rest::Other {
            names.push("other".into());
        }
        Ok(Some(ClassMap {
            groups: parsed,
            names,
            rest,
        }))
    }

    /// Classes after mapping.
    pub fn num_classes(&self) -> usize {
        self.groups.len() + usize::from(self.rest == Rest::Other)
    }

    /// The new label of every original label (255 stays 255).
    pub fn table(&self) -> [u8; 256] {
        let rest = match self.rest {
            Rest::Ignore => IGNORE_INDEX,
            Rest::Other => self.groups.len() as u8,
        };
        let mut table = [rest; 256];
        table[IGNORE_INDEX as usize] = IGNORE_INDEX;
        for (g, ids) in self.groups.iter().enumerate() {
            for &id in ids {
                table[id as usize] = g as u8;
            }
        }
        table
    }

    /// The new class of original class `c` (`None`: ignored).
    pub fn target_of(&self, c: usize) -> Option<usize> {
        let t = self.table()[c.min(255)];
        (t != IGNORE_INDEX).then_some(t as usize)
    }
}

/// Keep images with at least `min_pixels` pixels of any of `classes` (original trainIds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequireClasses {
    /// The classes looked for.
    pub classes: Vec<u8>,
    /// Pixels needed (at least 1).
    pub min_pixels: usize,
}

impl RequireClasses {
    /// Parses `data.require_classes` and `data.require_min_pixels`; `None` for an empty list.
    pub fn parse(classes: &[String], min_pixels: usize) -> Result<Option<RequireClasses>> {
        if classes.is_empty() {
            return Ok(None);
        }
        let classes = classes
            .iter()
            .map(|c| parse_class("data.require_classes", c))
            .collect::<Result<Vec<u8>>>()?;
        Ok(Some(RequireClasses {
            classes,
            min_pixels: min_pixels.max(1),
        }))
    }

    /// Whether `label` qualifies.
    pub fn accepts(&self, label: &[u8]) -> bool {
        let mut wanted = [false; 256];
        for &c in &self.classes {
            wanted[c as usize] = true;
        }
        label.iter().filter(|&&v| wanted[v as usize]).count() >= self.min_pixels
    }
}

/// A dataset seen through a filter and a class map.
pub struct Subset {
    inner: Arc<dyn Dataset>,
    /// The inner indices kept, in order.
    indices: Vec<usize>,
    table: Option<[u8; 256]>,
    note: String,
}

impl Subset {
    /// Keeps the samples `require` accepts (every sample is read once, in parallel; an image
    /// without labels is dropped) and maps the labels through `map`. Errors when no sample is
    /// left.
    pub fn new(
        inner: Arc<dyn Dataset>,
        require: Option<RequireClasses>,
        map: Option<&ClassMap>,
    ) -> Result<Subset> {
        let indices = match &require {
            None => (0..inner.len()).collect(),
            Some(require) => {
                let keep = (0..inner.len())
                    .into_par_iter()
                    .map(|i| {
                        let sample = inner.get(i)?;
                        Ok(sample.label.as_deref().is_some_and(|l| require.accepts(l)))
                    })
                    .collect::<Result<Vec<bool>>>()?;
                let indices: Vec<usize> = (0..inner.len()).filter(|&i| keep[i]).collect();
                if indices.is_empty() {
                    return Err(Error::invalid(
                        "data.require_classes",
                        format!(
                            "no image of {} has {} pixels of classes {:?}",
                            inner.describe(),
                            require.min_pixels,
                            require.classes
                        ),
                    ));
                }
                indices
            }
        };
        let mut note = String::new();
        if let Some(r) = &require {
            note += &format!(
                ", {} images with ≥ {} px of {:?}",
                indices.len(),
                r.min_pixels,
                r.classes
            );
        }
        if let Some(m) = map {
            note += &format!(", classes mapped to {:?}", m.names);
        }
        Ok(Subset {
            inner,
            indices,
            table: map.map(ClassMap::table),
            note,
        })
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn get(&self, index: usize) -> Result<Sample> {
        let inner = *self.indices.get(index).ok_or_else(|| {
            Error::invalid(
                "subset",
                format!("index {index} out of range for {} samples", self.len()),
            )
        })?;
        let mut sample = self.inner.get(inner)?;
        if let (Some(table), Some(label)) = (&self.table, sample.label.as_mut()) {
            label.iter_mut().for_each(|v| *v = table[*v as usize]);
        }
        Ok(sample)
    }

    fn id(&self, index: usize) -> String {
        self.indices
            .get(index)
            .map_or_else(String::new, |&i| self.inner.id(i))
    }

    fn describe(&self) -> String {
        format!("{}{}", self.inner.describe(), self.note)
    }
}
