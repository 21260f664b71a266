//! TensorBoard event files (`train --tensorboard`): scalars written the way
//! TensorBoard's own reader expects them.
//!
//! An event file is a TFRecord stream: each record is `u64 length (LE)`,
//! `u32 masked CRC-32C of the length bytes`, the payload, `u32 masked CRC-32C of
//! the payload`, where `masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8`. The payload
//! is a serialised `tensorflow.Event` protobuf. famix encodes the protobuf with
//! `prost` from message definitions that mirror TensorFlow's published
//! `event.proto` / `summary.proto` (only the fields famix writes; field numbers
//! as in the schema), and the CRC with the `crc` crate — no TensorFlow needed.
//!
//! The first record carries `file_version = "brain.Event:2"`. A resumed run opens a
//! new file whose first event after the version is `SessionLog{START}` at the step
//! after the checkpoint it resumes from: TensorBoard then drops the earlier events
//! from that step on (lines written after the checkpoint by a run that was killed,
//! whose iterations are redone), just as the run's JSON log is cut back on resume.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Context, Result};

/// `tensorflow.Event` (the fields famix writes).
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(oneof = "What", tags = "3, 5, 7")]
    what: Option<What>,
}

/// `Event.what`.
#[derive(Clone, PartialEq, prost::Oneof)]
enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value` with its `simple_value` (a scalar).
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, tag = "2")]
    simple_value: f32,
}

/// `tensorflow.SessionLog`; status 1 is START.
#[derive(Clone, PartialEq, prost::Message)]
struct SessionLog {
    #[prost(int32, tag = "1")]
    status: i32,
}

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn masked_crc(data: &[u8]) -> u32 {
    let c = CRC32C.checksum(data);
    c.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// One TFRecord: length, its CRC, payload, the payload's CRC.
fn record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Appends scalar events to one new event file in a folder.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<secs>.famix.<pid>` (and `dir`), writes the
    /// file version and, for a run resumed from a checkpoint at `start_step > 0`, a
    /// `SessionLog START` at `start_step + 1` (TensorBoard purges steps ≥ that).
    pub fn create(dir: &Path, start_step: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create TensorBoard folder {}", dir.display()))?;
        let t = now();
        // Several files can share the second (a quick resume): the name takes the
        // first free counter.
        let path = (0..)
            .map(|i| dir.join(format!("events.out.tfevents.{}.famix.{}.{i}", t as u64, std::process::id())))
            .find(|p| !p.exists())
            .expect("an unbounded range always yields a free name");
        let f = File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = EventWriter { out: BufWriter::new(f), path };
        w.event(Event { wall_time: t, step: 0, what: Some(What::FileVersion("brain.Event:2".into())) })?;
        if start_step > 0 {
            w.event(Event { wall_time: t, step: start_step as i64 + 1, what: Some(What::SessionLog(SessionLog { status: 1 })) })?;
        }
        Ok(w)
    }

    fn event(&mut self, e: Event) -> Result<()> {
        self.out.write_all(&record(&e.encode_to_vec())).with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// Writes scalars `(tag, value)` at `step` (one event).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let value = values.iter().map(|(tag, v)| SummaryValue { tag: tag.clone(), simple_value: *v as f32 }).collect();
        self.event(Event { wall_time: now(), step: step as i64, what: Some(What::Summary(Summary { value })) })
    }

    /// Pushes the events so far to the file and the disk.
    pub fn sync(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("cannot write {}", self.path.display()))?;
        self.out.get_ref().sync_data().with_context(|| format!("cannot sync {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C check value from the Castagnoli definition ("123456789" → 0xE3069283),
    /// and TensorFlow's masking of it.
    #[test]
    fn crc32c_and_mask() {
        assert_eq!(CRC32C.checksum(b"123456789"), 0xE306_9283);
        // ((0xE3069283 >> 15) | (0xE3069283 << 17)) + 0xa282ead8 mod 2^32, worked out by hand.
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn record_layout() {
        let r = record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
    }
}
