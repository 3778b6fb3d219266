//! Pixel shuffle (PyTorch's `pixel_shuffle`, TensorFlow's `depth_to_space`) and its inverse:
//! what the NesT generator's block de-aggregation uses to trade channels for resolution.

use burn::tensor::Tensor;

/// `[B, C·r², H, W]` → `[B, C, H·r, W·r]`, as `torch.nn.functional.pixel_shuffle`: output
/// `(c, h·r + i, w·r + j)` is input channel `c·r² + i·r + j` at `(h, w)`.
pub fn pixel_shuffle(x: Tensor<4>, r: usize) -> Tensor<4> {
    let [b, cr2, h, w] = x.dims();
    let c = cr2 / (r * r);
    x.reshape([b, c, r, r, h, w])
        .permute([0, 1, 4, 2, 5, 3])
        .reshape([b, c, h * r, w * r])
}

/// The inverse of [`pixel_shuffle`]: `[B, C, H·r, W·r]` → `[B, C·r², H, W]`.
pub fn pixel_unshuffle(x: Tensor<4>, r: usize) -> Tensor<4> {
    let [b, c, hr, wr] = x.dims();
    let (h, w) = (hr / r, wr / r);
    x.reshape([b, c, h, r, w, r])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([b, c * r * r, h, w])
}

/// [`pixel_shuffle`] on a channels-last map: `[B, H, W, C·r²]` → `[B, H·r, W·r, C]`, with the
/// same channel order (`c·r² + i·r + j`), so it equals permuting to NCHW, shuffling and
/// permuting back.
pub fn pixel_shuffle_channels_last(x: Tensor<4>, r: usize) -> Tensor<4> {
    let [b, h, w, cr2] = x.dims();
    let c = cr2 / (r * r);
    x.reshape([b, h, w, c, r, r])
        .permute([0, 1, 4, 2, 5, 3])
        .reshape([b, h * r, w * r, c])
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Tensor, TensorData};

    use super::*;

    fn ramp(shape: [usize; 4]) -> Tensor<4> {
        let n: usize = shape.iter().product();
        Tensor::from_data(
            TensorData::new((0..n).map(|v| v as f32).collect::<Vec<_>>(), shape),
            &Device::flex(),
        )
    }

    fn values(t: Tensor<4>) -> Vec<f32> {
        crate::nn::host_values(t).unwrap()
    }

    #[test]
    fn shuffle_places_each_channel_by_its_offset() {
        // One output channel, r = 2: input channels 0..4 are the offsets (0,0),(0,1),(1,0),(1,1).
        let x = ramp([1, 4, 1, 2]);
        // channel k holds [2k, 2k+1] over w.
        assert_eq!(values(pixel_shuffle(x, 2)), vec![0., 2., 1., 3., 4., 6., 5., 7.]);
    }

    #[test]
    fn unshuffle_inverts_shuffle_and_channels_last_agrees() {
        let x = ramp([2, 12, 3, 5]);
        let y = pixel_shuffle(x.clone(), 2);
        assert_eq!(y.dims(), [2, 3, 6, 10]);
        assert_eq!(values(pixel_unshuffle(y.clone(), 2)), values(x.clone()));
        let last = pixel_shuffle_channels_last(x.permute([0, 2, 3, 1]), 2).permute([0, 3, 1, 2]);
        assert_eq!(values(last), values(y));
    }
}
