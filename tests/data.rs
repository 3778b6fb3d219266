//! Dataset readers on small files the tests write, and their errors on bad input.

use std::io::Write;
use std::path::Path;

use vitkit::VitError;
use vitkit::data::{DataSource, FolderOptions, generate_shapes, load_fashion_mnist, read_idx_images};

fn idx_images(n: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 3];
    for d in [n, h, w] {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend((0..n * h * w).map(|i| (i % 251) as u8));
    out
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, 1];
    out.extend((labels.len() as u32).to_be_bytes());
    out.extend(labels);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn write_fashion_mnist(dir: &Path, compress: bool) {
    let files = [
        ("train-images-idx3-ubyte", idx_images(6, 28, 28)),
        ("train-labels-idx1-ubyte", idx_labels(&[0, 1, 2, 3, 4, 9])),
        ("t10k-images-idx3-ubyte", idx_images(2, 28, 28)),
        ("t10k-labels-idx1-ubyte", idx_labels(&[5, 6])),
    ];
    for (name, bytes) in files {
        if compress {
            std::fs::write(dir.join(format!("{name}.gz")), gz(&bytes)).unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

#[test]
fn reads_fashion_mnist_gzipped_and_raw() {
    for compress in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        write_fashion_mnist(dir.path(), compress);
        let (train, test) = load_fashion_mnist(dir.path()).unwrap();
        assert_eq!((train.len(), test.len()), (6, 2));
        assert_eq!((train.channels, train.height, train.width), (1, 28, 28));
        assert_eq!(train.labels, vec![0, 1, 2, 3, 4, 9]);
        assert_eq!(train.image(1)[0], (784 % 251) as u8);
    }
}

#[test]
fn missing_fashion_mnist_names_the_path_and_the_package() {
    let err = DataSource::parse("fashion-mnist:/nonexistent/fm")
        .unwrap()
        .load([28, 28], &FolderOptions::default())
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, VitError::MissingDataset { .. }));
    assert!(
        msg.contains("/nonexistent/fm") && msg.contains("apt-get install dataset-fashion-mnist"),
        "{msg}"
    );
}

#[test]
fn truncated_idx_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = idx_images(3, 28, 28);
    bytes.truncate(bytes.len() - 10);
    let path = dir.path().join("imgs");
    std::fs::write(&path, gz(&bytes)).unwrap();
    let msg = read_idx_images(&path).unwrap_err().to_string();
    assert!(msg.contains("truncated"), "{msg}");
    std::fs::write(&path, &gz(&bytes)[..40]).unwrap();
    assert!(read_idx_images(&path).is_err());
}

#[test]
fn reads_cifar10_binary_batches() {
    let dir = tempfile::tempdir().unwrap();
    let record = |label: u8, fill: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, 3072));
        r
    };
    for (i, name) in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ]
    .iter()
    .enumerate()
    {
        let mut bytes = record(i as u8, 10 * i as u8);
        bytes.extend(record(9, 1));
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    std::fs::write(
        dir.path().join("batches.meta.txt"),
        "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n",
    )
    .unwrap();
    let splits = DataSource::Cifar10(dir.path().into())
        .load([32, 32], &FolderOptions::default())
        .unwrap();
    assert_eq!(splits.train.len(), 10);
    assert_eq!(splits.test.len(), 2);
    assert_eq!(splits.train.labels[..4], [0, 9, 1, 9]);
    assert_eq!(splits.train.image(2)[100], 10);
    assert_eq!(splits.info.class_names[9], "truck");
    // A truncated batch is an error naming the file.
    std::fs::write(dir.path().join("test_batch.bin"), vec![0u8; 3000]).unwrap();
    let msg = DataSource::Cifar10(dir.path().into())
        .load([32, 32], &FolderOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("test_batch.bin") && msg.contains("truncated"),
        "{msg}"
    );
}

fn write_png(path: &Path, colour: [u8; 3], size: u32) {
    image::RgbImage::from_pixel(size, size, image::Rgb(colour))
        .save(path)
        .unwrap();
}

fn image_folder(root: &Path) {
    for (class, colour) in [("cat", [200, 10, 10]), ("dog", [10, 10, 200])] {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..10 {
            write_png(&dir.join(format!("{i}.png")), colour, 20 + i);
        }
        image::RgbImage::from_pixel(24, 24, image::Rgb(colour))
            .save(dir.join("extra.jpg"))
            .unwrap();
    }
}

#[test]
fn reads_an_image_folder_resizing_and_splitting() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path());
    let splits = DataSource::Folder(dir.path().into())
        .load(
            [16, 16],
            &FolderOptions {
                skip_bad_images: false,
                channels: 3,
            },
        )
        .unwrap();
    assert_eq!(splits.info.class_names, vec!["cat", "dog"]);
    assert_eq!(splits.train.len() + splits.test.len(), 22);
    assert_eq!(splits.test.len(), 2, "every 10th image per class is held out");
    assert_eq!(
        (splits.train.height, splits.train.width, splits.train.channels),
        (16, 16, 3)
    );
    let first_dog = splits.train.labels.iter().position(|&l| l == 1).unwrap();
    let img = splits.train.image(first_dog);
    assert!(img[2 * 256] > 150 && img[0] < 60, "dog images are blue");
}

#[test]
fn corrupt_image_is_an_error_naming_it_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    image_folder(dir.path());
    let bad = dir.path().join("cat/broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    let err = DataSource::Folder(dir.path().into())
        .load(
            [16, 16],
            &FolderOptions {
                skip_bad_images: false,
                channels: 3,
            },
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, VitError::BadImage { .. })
            && msg.contains("broken.png")
            && msg.contains("--skip-bad-images"),
        "{msg}"
    );
    let splits = DataSource::Folder(dir.path().into())
        .load(
            [16, 16],
            &FolderOptions {
                skip_bad_images: true,
                channels: 3,
            },
        )
        .unwrap();
    assert_eq!(
        splits.train.len() + splits.test.len(),
        22,
        "the broken file is skipped"
    );
}

#[test]
fn unknown_dataset_lists_the_valid_ones() {
    let msg = DataSource::parse("imagenet21k").unwrap_err().to_string();
    assert!(
        msg.contains("imagenet21k") && msg.contains("fashion-mnist") && msg.contains("folder:DIR"),
        "{msg}"
    );
}

#[test]
fn synthetic_data_is_deterministic_balanced_and_varied() {
    let a = generate_shapes(200, 32, 7);
    let b = generate_shapes(200, 32, 7);
    assert_eq!(a.pixels, b.pixels);
    assert_ne!(a.pixels, generate_shapes(200, 32, 8).pixels);
    for class in 0..10 {
        assert_eq!(a.labels.iter().filter(|&&l| l == class).count(), 20);
    }
    // Two images of the same class differ (colour, size, position, rotation are random).
    assert_ne!(a.image(0), a.image(10));
}

#[test]
fn a_label_fraction_keeps_that_share_of_every_class_the_same_way_each_time() {
    use vitkit::data::ImageDataset;
    // 3 classes of 100, 40 and 3 images, each image's one pixel its index.
    let labels: Vec<u32> = (0..143u32)
        .map(|i| {
            if i < 100 {
                0
            } else if i < 140 {
                1
            } else {
                2
            }
        })
        .collect();
    let data = || ImageDataset {
        pixels: (0..143).map(|i| i as u8).collect(),
        labels: labels.clone(),
        channels: 1,
        height: 1,
        width: 1,
    };
    let tenth = data().per_class_subset(0.1, 7);
    let count = |k: u32| tenth.labels.iter().filter(|&&l| l == k).count();
    assert_eq!(
        (count(0), count(1), count(2)),
        (10, 4, 1),
        "at least one of a small class"
    );
    // Each kept image is still paired with its label, in the original order.
    for (p, &l) in tenth.pixels.iter().zip(&tenth.labels) {
        assert_eq!(labels[*p as usize], l);
    }
    assert!(tenth.pixels.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(data().per_class_subset(0.1, 7).pixels, tenth.pixels);
    assert_ne!(
        data().per_class_subset(0.1, 8).pixels,
        tenth.pixels,
        "another seed, another draw"
    );
    assert_eq!(data().per_class_subset(1.0, 7).len(), 143);
}
