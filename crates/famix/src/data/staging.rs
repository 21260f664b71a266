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
