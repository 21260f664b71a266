//! Batches staged for the model while it runs: a producer thread groups decoded
//! images into batches of one size, converts each batch to one (N, 3, H, W) u8 tensor
//! (HWC → CHW, stacked) and uploads it (pinned and asynchronous on CUDA), while the
//! caller runs the model on the previous batch. Bounded (at most `depth` staged
//! batches wait) and ordered (one producer). Used by `predict` and video.

use tch::{Device, Tensor};

use crate::error::Result;
use crate::imageops::Image8;

/// Groups consecutive `(tag, image)` items into batches of at most `max` images of
/// one size (a size change starts a new batch, as batching needs one shape).
pub fn same_size_batches<T, I>(items: I, max: usize) -> impl Iterator<Item = (Vec<T>, Vec<Image8>)>
where
    I: Iterator<Item = (T, Image8)>,
{
    let mut items = items.peekable();
    std::iter::from_fn(move || {
        let (t, first) = items.next()?;
        let size = (first.width, first.height);
        let (mut tags, mut images) = (vec![t], vec![first]);
        while images.len() < max.max(1) {
            match items.next_if(|(_, im)| (im.width, im.height) == size) {
                Some((t, im)) => {
                    tags.push(t);
                    images.push(im);
                }
                None => break,
            }
        }
        Some((tags, images))
    })
}

/// Runs `consume(tags, images, x)` on every batch of `batches`, where `x` is the
/// batch's u8 tensor on `device`, staged by a producer thread up to `depth` batches
/// ahead. Stops at the first error of `consume` (the producer then stops too).
pub fn staged<T, I, F>(batches: I, device: Device, depth: usize, mut consume: F) -> Result<()>
where
    T: Send,
    I: Iterator<Item = (Vec<T>, Vec<Image8>)> + Send,
    F: FnMut(Vec<T>, Vec<Image8>, Tensor) -> Result<()>,
{
    std::thread::scope(|s| {
        let (tx, rx) = crossbeam_channel::bounded(depth.max(1));
        s.spawn(move || {
            for (tags, images) in batches {
                let x = Tensor::stack(&images.iter().map(Image8::to_tensor_u8).collect::<Vec<_>>(), 0);
                let x = crate::device::upload(&x, device);
                if tx.send((tags, images, x)).is_err() {
                    break;
                }
            }
        });
        for (tags, images, x) in rx {
            consume(tags, images, x)?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize, v: u8) -> Image8 {
        Image8::new(w, h, 3, v)
    }

    /// Batches keep the input order, never mix sizes and never exceed `max`.
    #[test]
    fn batches_group_consecutive_same_size_images() {
        let sizes = [(4, 4), (4, 4), (4, 4), (8, 4), (4, 4), (4, 4)];
        let items = sizes.iter().enumerate().map(|(i, &(w, h))| (i, img(w, h, i as u8)));
        let batches: Vec<Vec<usize>> = same_size_batches(items, 2).map(|(tags, _)| tags).collect();
        assert_eq!(batches, vec![vec![0, 1], vec![2], vec![3], vec![4, 5]]);
    }

    /// Every batch reaches the consumer in order as one (N, 3, H, W) u8 tensor holding
    /// its images; an error of the consumer stops the pipeline and is returned.
    #[test]
    fn staged_batches_arrive_in_order_and_errors_stop_them() {
        let items = (0..7u8).map(|i| (i, img(3, 2, i)));
        let mut seen = Vec::new();
        staged(same_size_batches(items, 3), Device::Cpu, 2, |tags, images, x| {
            assert_eq!(x.size(), vec![tags.len() as i64, 3, 2, 3]);
            for (k, (t, im)) in tags.iter().zip(&images).enumerate() {
                assert_eq!(x.get(k as i64).max().int64_value(&[]), *t as i64);
                assert_eq!(im.data[0], *t);
            }
            seen.extend(tags);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..7).collect::<Vec<u8>>());
        let mut calls = 0;
        let r = staged(same_size_batches((0..9u8).map(|i| (i, img(3, 2, i))), 1), Device::Cpu, 1, |_, _, _| {
            calls += 1;
            if calls == 2 {
                return Err(crate::Error::msg("stop"));
            }
            Ok(())
        });
        assert!(r.is_err());
        assert_eq!(calls, 2, "no batch is consumed after an error");
    }
}
