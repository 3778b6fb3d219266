//! Image–caption data for CLIP: a caption list (JSONL or TSV of image path and caption, paths
//! relative to the list) or the built-in shapes with generated captions.
//!
//! JSONL lines are objects with `image` and `caption`, an optional `split` (`train` or `test`),
//! and any other string fields (e.g. an emoji's `category`), kept as attributes that zero-shot
//! classification can score against. TSV lines are `path<TAB>caption[<TAB>split]`. Without any
//! `test` line, every tenth line is held out for validation.

use std::path::{Path, PathBuf};

use super::{FolderOptions, ImageDataset, load_image_file};
use crate::{Result, VitError};

/// One attribute of every image (a shape, a colour, an emoji category), per split.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub train: Vec<String>,
    pub test: Vec<String>,
}

impl Attribute {
    /// Its distinct values in the test split, sorted: the classes of a zero-shot task.
    pub fn test_classes(&self) -> Vec<String> {
        let mut v = self.test.clone();
        v.sort();
        v.dedup();
        v
    }
}

/// The captions of both splits, in the images' order, and the images' attributes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CaptionSplits {
    pub train: Vec<String>,
    pub test: Vec<String>,
    pub attributes: Vec<Attribute>,
}

impl CaptionSplits {
    pub fn attribute(&self, name: &str) -> Result<&Attribute> {
        self.attributes.iter().find(|a| a.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.attributes.iter().map(|a| a.name.as_str()).collect();
            VitError::Config(format!(
                "the captions have no attribute '{name}'; they have: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}

/// One line of a caption list.
struct Entry {
    line: usize,
    image: PathBuf,
    caption: String,
    test: Option<bool>,
    fields: Vec<(String, String)>,
}

fn parse_line(list: &Path, line: usize, text: &str, jsonl: bool) -> Result<Entry> {
    let bad = |reason: String| VitError::BadData {
        path: list.to_path_buf(),
        reason: format!("line {line}: {reason}"),
    };
    let base = list.parent().unwrap_or(Path::new("."));
    let (image, caption, split, fields) = if jsonl {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
        let field = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(String::from);
        let image = field("image").ok_or_else(|| bad("no \"image\" path".into()))?;
        let caption = field("caption").ok_or_else(|| bad("no \"caption\"".into()))?;
        let fields = obj
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "image" | "caption" | "split"))
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
            .collect();
        (image, caption, field("split"), fields)
    } else {
        let mut parts = text.split('\t');
        let image = parts.next().unwrap_or_default().to_string();
        let caption = parts
            .next()
            .ok_or_else(|| bad("expected PATH<TAB>CAPTION".into()))?
            .to_string();
        (image, caption, parts.next().map(String::from), Vec::new())
    };
    if caption.trim().is_empty() {
        return Err(bad(format!("empty caption for {image}")));
    }
    let test = match split.as_deref() {
        None => None,
        Some("train") => Some(false),
        Some("test" | "val" | "validation") => Some(true),
        Some(other) => return Err(bad(format!("split '{other}' is neither train nor test"))),
    };
    Ok(Entry {
        line,
        image: base.join(image),
        caption,
        test,
        fields,
    })
}

/// Reads a caption list and its images (RGB, resized to `size`). Returns the train and test
/// images (labelled by their `label`, else `category`, else first attribute, when there is
/// one), the captions, and the label names.
pub fn load_caption_list(
    list: &Path,
    size: [usize; 2],
    opts: &FolderOptions,
) -> Result<(ImageDataset, ImageDataset, CaptionSplits, Vec<String>)> {
    let text = std::fs::read_to_string(list).map_err(|e| VitError::io(list, e))?;
    let jsonl = list.extension().and_then(|e| e.to_str()) != Some("tsv");
    let entries = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| parse_line(list, i + 1, l, jsonl))
        .collect::<Result<Vec<_>>>()?;
    if entries.is_empty() {
        return Err(VitError::BadData {
            path: list.to_path_buf(),
            reason: "no captions in it".into(),
        });
    }
    let any_test = entries.iter().any(|e| e.test == Some(true));
    let names: Vec<String> = entries
        .first()
        .map(|e| e.fields.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let mut splits = [Split::default(), Split::default()];
    let mut skipped = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let test = e.test.unwrap_or(!any_test && i % 10 == 9);
        let pixels = match load_image_file(&e.image, 3, size) {
            Ok(p) => p,
            Err(VitError::BadImage { .. } | VitError::Io { .. }) if opts.skip_bad_images => {
                skipped.push(e.image.clone());
                continue;
            }
            Err(err) => {
                return Err(VitError::BadData {
                    path: list.to_path_buf(),
                    reason: format!(
                        "line {}: {err} (use --skip-bad-images to skip and count such lines)",
                        e.line
                    ),
                });
            }
        };
        let split = &mut splits[usize::from(test)];
        split.pixels.extend(pixels);
        split.captions.push(e.caption.clone());
        let values = names.iter().map(|n| {
            e.fields
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        });
        split.fields.push(values.collect());
    }
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} caption line(s) whose image could not be read, e.g. {}",
            skipped.len(),
            skipped[0].display()
        );
    }
    let [train, test] = splits;
    if train.captions.is_empty() || test.captions.is_empty() {
        return Err(VitError::BadData {
            path: list.to_path_buf(),
            reason: "needs images in both the train and the test split".into(),
        });
    }
    let attributes: Vec<Attribute> = names
        .iter()
        .enumerate()
        .map(|(k, name)| Attribute {
            name: name.clone(),
            train: train.fields.iter().map(|f| f[k].clone()).collect(),
            test: test.fields.iter().map(|f| f[k].clone()).collect(),
        })
        .collect();
    // Labels: the `label` attribute's value, else `category`'s, else the first attribute's (0
    // without attributes).
    let label_field = names
        .iter()
        .position(|n| n == "label")
        .or_else(|| names.iter().position(|n| n == "category"))
        .unwrap_or(0);
    let mut classes: Vec<String> = attributes
        .get(label_field)
        .map(|a| [a.train.clone(), a.test.clone()].concat())
        .unwrap_or_default();
    classes.sort();
    classes.dedup();
    let label_of = |k: usize, split: &Split| -> Vec<u32> {
        (0..split.captions.len())
            .map(|i| {
                let value = split.fields.get(i).and_then(|f| f.get(k));
                value
                    .and_then(|v| classes.iter().position(|c| c == v))
                    .unwrap_or(0) as u32
            })
            .collect()
    };
    let dataset = |split: &Split| ImageDataset {
        labels: label_of(label_field, split),
        pixels: split.pixels.clone(),
        channels: 3,
        height: size[0],
        width: size[1],
    };
    let (train_set, test_set) = (dataset(&train), dataset(&test));
    let captions = CaptionSplits {
        train: train.captions,
        test: test.captions,
        attributes,
    };
    let class_names = if classes.is_empty() {
        vec!["image".to_string()]
    } else {
        classes
    };
    Ok((train_set, test_set, captions, class_names))
}

#[derive(Default)]
struct Split {
    pixels: Vec<u8>,
    captions: Vec<String>,
    fields: Vec<Vec<String>>,
}
