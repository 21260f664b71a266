//! Reading tensors from the checkpoint files users bring: PyTorch zip archives
//! (`torch.save` state dicts, reference `.pth` training checkpoints, TorchScript
//! archives such as OpenAI's `RN50.pt`), legacy `torch.save` streams, safetensors,
//! and any of these gzip-compressed. Everything comes back as f32 CPU tensors
//! (fp16/bf16/f64 are converted), keyed by their state-dict names.

use std::collections::HashMap;
use std::io::{Cursor, Read};
use std::path::Path;
use std::rc::Rc;

use crate::error::{bail, fail, format_err, Context, Error, Result};
use tch::{Kind, Tensor};

use super::pickle::{self, Storage, StorageDtype, TensorRef, Value};

/// The detected container format of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A zip written by `torch.save` (state dict or a dict that holds one).
    TorchZip,
    /// A TorchScript archive (`torch.jit.save`/`trace`): the module tree in data.pkl.
    TorchScript,
    /// The pre-1.6 `torch.save` stream.
    TorchLegacy,
    /// safetensors.
    Safetensors,
}

/// A loaded checkpoint: named tensors in file order, plus the top-level pickled value
/// (for non-tensor entries such as a reference checkpoint's `cur_itrs`).
pub struct LoadedFile {
    /// The container format.
    pub format: Format,
    /// Every tensor, with its state-dict name.
    pub tensors: Vec<(String, Tensor)>,
    /// The top-level pickled object (PyTorch formats).
    pub top: Option<Value>,
    /// safetensors `__metadata__`, if any.
    pub metadata: HashMap<String, String>,
}

impl LoadedFile {
    /// The tensors by name.
    pub fn into_map(self) -> HashMap<String, Tensor> {
        self.tensors.into_iter().collect()
    }
}

/// A folder where a file was expected, with the checkpoints inside it named (a run
/// folder holds `latest.safetensors` and `best.safetensors`).
fn folder_given(path: &Path) -> Error {
    let inside: Vec<String> = ["best.safetensors", "latest.safetensors", "clip.safetensors"]
        .iter()
        .filter(|f| path.join(f).is_file())
        .map(|f| path.join(f).display().to_string())
        .collect();
    let hint = match inside.as_slice() {
        [] => String::new(),
        files => format!(" (it holds {}: pass one of them)", files.join(", ")),
    };
    Error::invalid_input(path, format!("{} is a folder, not a checkpoint file{hint}", path.display()))
}

/// Reads a file's bytes, transparently un-gzipping `.gz` content.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        return Err(folder_given(path));
    }
    let raw = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::invalid_input(path, format!("{} not found", path.display())),
        _ => Error::from(e).context(format!("cannot read {}", path.display())),
    })?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let limit = inflate_limit(raw.len());
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::from(e).unreadable(path, "corrupt gzip data"))?;
        if out.len() as u64 > limit {
            fail!(
                InvalidInput,
                path,
                "{}: gzip data expands to more than {limit} bytes ({} compressed): refusing a decompression bomb",
                path.display(),
                raw.len()
            );
        }
        return Ok(out);
    }
    Ok(raw)
}

/// The most bytes famix inflates from `compressed` compressed bytes. Weights compress
/// poorly (a few ×); a ratio in the thousands is a decompression bomb.
pub(crate) fn inflate_limit(compressed: usize) -> u64 {
    (compressed as u64).saturating_mul(64).saturating_add(64 << 20)
}

/// Loads every tensor of a checkpoint file. Errors name the file and the problem.
pub fn load_file(path: &Path) -> Result<LoadedFile> {
    let bytes = read_bytes(path)?;
    parse(&bytes).map_err(|e| e.unreadable(path, "not a readable checkpoint"))
}

/// Reads a checkpoint from memory (format detected from the bytes); a malformed one
/// is [`Error::Unreadable`] (the parser's message is its source).
pub fn load_bytes(bytes: &[u8]) -> Result<LoadedFile> {
    parse(bytes).map_err(|e| e.unreadable("checkpoint bytes", "not a readable checkpoint"))
}

/// The parsers behind [`load_file`] and [`load_bytes`]: their messages say what is
/// malformed; the two entry points make every such error [`Error::Unreadable`].
fn parse(bytes: &[u8]) -> Result<LoadedFile> {
    if bytes.len() < 8 {
        bail!("file is empty or truncated ({} bytes)", bytes.len());
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return load_torch_zip(bytes);
    }
    // safetensors first: its 8-byte header length can start with 0x80 like a pickle.
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    if bytes.len() > 8 && bytes[8] == b'{' && header_len < bytes.len() {
        return load_safetensors(bytes);
    }
    if bytes[0] == 0x80 && bytes.len() > 2 && bytes[1] <= 5 {
        let top = pickle::legacy_load(bytes).context("legacy torch.save format")?;
        let mut tensors = Vec::new();
        collect_state_dict(&select_state_dict(&top), "", &mut tensors, &mut StorageCache::default())?;
        return Ok(LoadedFile { format: Format::TorchLegacy, tensors, top: Some(top), metadata: HashMap::new() });
    }
    bail!("unknown format (expected a PyTorch .pt/.pth/.bin zip archive, a TorchScript archive, or .safetensors)")
}

/// Materialises pickled tensor views, each storage once; the bytes it may produce in
/// all are bounded by the storages' own size (4× plus 256 MiB for expanded views), so
/// a small file whose tensors share storages or views cannot make famix allocate
/// gigabytes.
#[derive(Default)]
struct StorageCache {
    by_ptr: HashMap<*const Storage, Tensor>,
    storage_bytes: u64,
    produced_bytes: u64,
    /// Module-tree nodes visited (see `collect_module`).
    visits: u64,
}

impl StorageCache {
    fn flat(&mut self, s: &Rc<Storage>) -> Result<Tensor> {
        let key = Rc::as_ptr(s);
        if let Some(t) = self.by_ptr.get(&key) {
            return Ok(t.shallow_clone());
        }
        let kind = match s.dtype {
            StorageDtype::F64 => Kind::Double,
            StorageDtype::F32 => Kind::Float,
            StorageDtype::F16 => Kind::Half,
            StorageDtype::BF16 => Kind::BFloat16,
            StorageDtype::I64 => Kind::Int64,
            StorageDtype::I32 => Kind::Int,
            StorageDtype::I16 => Kind::Int16,
            StorageDtype::I8 => Kind::Int8,
            StorageDtype::U8 => Kind::Uint8,
            StorageDtype::Bool => Kind::Bool,
        };
        let n = (s.data.len() / s.dtype.size()) as i64;
        let t = Tensor::f_from_data_size(&s.data[..n as usize * s.dtype.size()], &[n], kind)?;
        self.storage_bytes += s.data.len() as u64;
        self.by_ptr.insert(key, t.shallow_clone());
        Ok(t)
    }

    fn tensor(&mut self, r: &TensorRef) -> Result<Tensor> {
        let flat = self.flat(&r.storage)?;
        let numel = r.size.iter().try_fold(1u64, |acc, &s| acc.checked_mul(s as u64)).unwrap_or(u64::MAX);
        let bytes = numel.saturating_mul(r.storage.dtype.size() as u64);
        self.produced_bytes = self.produced_bytes.saturating_add(bytes);
        if self.produced_bytes > self.storage_bytes.saturating_mul(4).saturating_add(256 << 20) {
            bail!("the file's tensors expand to far more data than it stores ({} bytes so far): refusing it", self.produced_bytes);
        }
        let t = flat.f_as_strided(&r.size, &r.stride, Some(r.offset as i64))?;
        Ok(to_f32_if_float(t.contiguous()))
    }
}

/// One pickled tensor as an f32 (for floats) CPU tensor.
pub(crate) fn tensor_from_ref(r: &TensorRef) -> Result<Tensor> {
    StorageCache::default().tensor(r)
}

fn to_f32_if_float(t: Tensor) -> Tensor {
    match t.kind() {
        Kind::Half | Kind::BFloat16 | Kind::Double => t.to_kind(Kind::Float),
        _ => t,
    }
}

/// Reads one zip entry, refusing to inflate more than `cap` bytes.
fn read_entry(zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str, cap: u64) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let entry = zip.by_name(name).with_context(|| format!("archive lacks {name}"))?;
    entry.take(cap + 1).read_to_end(&mut data).with_context(|| format!("reading {name}"))?;
    if data.len() as u64 > cap {
        bail!("{name} inflates to more than the {cap} bytes it can need: refusing a decompression bomb");
    }
    Ok(data)
}

fn load_torch_zip(bytes: &[u8]) -> Result<LoadedFile> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).context("corrupt zip archive (truncated download?)")?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names
        .iter()
        .filter(|n| n.ends_with("/data.pkl") || *n == "data.pkl")
        .min_by_key(|n| n.len())
        .ok_or_else(|| format_err!("zip archive without data.pkl: not a PyTorch file"))?
        .clone();
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let is_script = names.iter().any(|n| n.starts_with(&format!("{prefix}code/")) || *n == format!("{prefix}constants.pkl"));
    let limit = inflate_limit(bytes.len());
    let data_pkl = read_entry(&mut zip, &pkl, limit)?;

    let mut storages: HashMap<String, Rc<Storage>> = HashMap::new();
    let mut persistent = |pid: &Value| -> Result<Value> {
        let t = pid.list_items().ok_or_else(|| format_err!("persistent id is not a tuple"))?;
        if t.first().and_then(|v| v.as_str()) != Some("storage") || t.len() < 3 {
            bail!("unsupported persistent id {:?}", t.first());
        }
        let dtype = pickle::storage_dtype(&t[1])?;
        let key = t[2].as_str().ok_or_else(|| format_err!("storage key is not a string"))?.to_string();
        if let Some(s) = storages.get(&key) {
            return Ok(Value::Storage(s.clone()));
        }
        let entry = format!("{prefix}data/{key}");
        // Never inflate more than the storage needs (its declared element count).
        let need = t.get(4).and_then(|v| v.as_int()).map(|n| u64::try_from(n).ok().and_then(|n| n.checked_mul(dtype.size() as u64)));
        let cap = match need {
            Some(Some(n)) if n <= limit => n,
            Some(_) => bail!("{entry}: declared size is implausible for a {}-byte file", bytes.len()),
            None => limit,
        };
        let data = read_entry(&mut zip, &entry, cap).with_context(|| "archive lacks or cannot read tensor data (truncated file?)")?;
        if let Some(Some(n)) = need {
            if (data.len() as u64) < n {
                bail!("{entry} holds {} bytes, {n} expected (truncated file?)", data.len());
            }
        }
        let s = Rc::new(Storage { dtype, data });
        storages.insert(key, s.clone());
        Ok(Value::Storage(s))
    };
    let mut pos = 0;
    let top = pickle::load(&data_pkl, &mut pos, &mut persistent).with_context(|| format!("decoding {pkl}"))?;

    let mut tensors = Vec::new();
    let mut cache = StorageCache::default();
    let format = if is_script || matches!(top, Value::Object(_)) {
        collect_module(&top, "", &mut tensors, &mut cache, 0)?;
        Format::TorchScript
    } else {
        collect_state_dict(&select_state_dict(&top), "", &mut tensors, &mut cache)?;
        Format::TorchZip
    };
    Ok(LoadedFile { format, tensors, top: Some(top), metadata: HashMap::new() })
}

/// A `torch.save` dict may be the state dict itself or wrap it (`model_state` in the
/// FAMix reference, `state_dict` in open_clip training checkpoints).
fn select_state_dict(top: &Value) -> Value {
    for key in ["model_state", "state_dict", "model"] {
        if let Some(v @ Value::Dict(_)) = top.get(key) {
            return v;
        }
    }
    top.clone()
}

fn collect_state_dict(v: &Value, prefix: &str, out: &mut Vec<(String, Tensor)>, cache: &mut StorageCache) -> Result<()> {
    let items = v.dict_items().ok_or_else(|| format_err!("top-level object is a {}, not a state dict", v.type_name()))?;
    for (k, val) in items {
        let name = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
        if let Value::Tensor(r) = &val {
            let t = cache.tensor(r).with_context(|| format!("tensor {name}"))?;
            out.push((name, t))
        }
    }
    Ok(())
}

/// TorchScript: each module is an object whose `__setstate__` dict maps attribute
/// names to parameters, buffers and submodules.
fn collect_module(v: &Value, prefix: &str, out: &mut Vec<(String, Tensor)>, cache: &mut StorageCache, depth: usize) -> Result<()> {
    if depth > 64 {
        bail!("TorchScript module tree is too deep");
    }
    // Shared sub-modules are walked once per path; bound the paths (a module DAG
    // with exponentially many paths would otherwise never finish).
    cache.visits += 1;
    if cache.visits > 1_000_000 {
        bail!("TorchScript module tree has more than a million module paths");
    }
    let state = match v {
        Value::Object(o) => o.borrow().state.clone(),
        _ => return Ok(()),
    };
    let Some(state) = state else { return Ok(()) };
    let Some(items) = state.dict_items() else { return Ok(()) };
    for (k, val) in items {
        let name = if prefix.is_empty() { k } else { format!("{prefix}.{k}") };
        match &val {
            Value::Tensor(r) => out.push((name.clone(), cache.tensor(r).with_context(|| format!("tensor {name}"))?)),
            Value::Object(_) => collect_module(&val, &name, out, cache, depth + 1)?,
            _ => {}
        }
    }
    Ok(())
}

fn load_safetensors(bytes: &[u8]) -> Result<LoadedFile> {
    use safetensors::{tensor::Dtype, SafeTensors};
    let (_, meta) = SafeTensors::read_metadata(bytes).context("corrupt safetensors header")?;
    let st = SafeTensors::deserialize(bytes).context("corrupt safetensors file (truncated?)")?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    // Keep file order (offsets) so listings are stable.
    let mut names: Vec<(usize, String)> =
        st.names().into_iter().map(|n| (meta.info(n).map(|i| i.data_offsets.0).unwrap_or(0), n.to_string())).collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (_, name) in names {
        let view = st.tensor(&name)?;
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::I16 => Kind::Int16,
            Dtype::I8 => Kind::Int8,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => bail!("tensor {name}: unsupported safetensors dtype {other:?}"),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind).with_context(|| format!("tensor {name}"))?;
        tensors.push((name, to_f32_if_float(t)));
    }
    Ok(LoadedFile { format: Format::Safetensors, tensors, top: None, metadata })
}

/// Writes tensors (any device, f32/i64/u8...) to a safetensors file atomically.
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<()> {
    let bytes = safetensors_bytes(tensors, metadata)?;
    crate::io::atomic_write(path, &bytes)
}

/// A safetensors file's bytes (tensors sorted by the caller).
pub(crate) fn safetensors_bytes(tensors: &[(String, Tensor)], metadata: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let (dtype, t) = match t.kind() {
            Kind::Float => (Dtype::F32, t),
            Kind::Double => (Dtype::F64, t),
            Kind::Half => (Dtype::F16, t),
            Kind::BFloat16 => (Dtype::BF16, t),
            Kind::Int64 => (Dtype::I64, t),
            Kind::Int => (Dtype::I32, t),
            Kind::Uint8 => (Dtype::U8, t),
            Kind::Bool => (Dtype::BOOL, t),
            k => bail!("tensor {name}: cannot store kind {k:?} in safetensors"),
        };
        let numel = t.numel();
        let mut buf = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut buf, numel)?;
        owned.push((name.clone(), dtype, t.size().iter().map(|&d| d as usize).collect(), buf));
    }
    let views: Vec<(String, TensorView)> =
        owned.iter().map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?))).collect::<Result<_>>()?;
    Ok(safetensors::serialize(views, metadata)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_even_when_the_header_length_looks_like_a_pickle() {
        // Pad a tensor name until the JSON header is 0x180 bytes: its first byte is 0x80.
        for pad in 0..400 {
            let name = format!("w{}", "x".repeat(pad));
            let t = Tensor::from_slice(&[1.5f32, -2.0, 3.25]).view([3]);
            let bytes = safetensors_bytes(&[(name.clone(), t.shallow_clone())], None).unwrap();
            let f = load_bytes(&bytes).unwrap();
            assert_eq!(f.format, Format::Safetensors);
            assert_eq!(f.tensors[0].0, name);
            assert_eq!(Vec::<f32>::try_from(&f.tensors[0].1).unwrap(), vec![1.5, -2.0, 3.25]);
        }
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let err = load_bytes(b"definitely not a checkpoint").err().unwrap();
        assert!(format!("{err:#}").contains("unknown format"));
        assert!(load_bytes(b"").is_err());
    }

    /// The workspace's PyTorch fixtures (kept with the integration tests).
    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../famix-cli/tests/fixtures").join(name)
    }

    /// PyTorch's legacy (non-zip) torch.save format reads exactly like the zip format
    /// written from the same state dict (tolerance 0), strided views included.
    #[test]
    fn legacy_torch_save_reads_like_the_zip_format() {
        let legacy = load_file(&fixture("legacy_state.pth")).unwrap();
        assert_eq!(legacy.format, Format::TorchLegacy);
        let zip = load_file(&fixture("zip_state.pth")).unwrap().into_map();
        let legacy = legacy.into_map();
        assert_eq!(legacy.len(), 6);
        for (k, t) in &zip {
            let l = &legacy[k];
            assert_eq!((l.size(), l.kind()), (t.size(), t.kind()), "{k}");
            assert!(l.equal(t), "{k} differs");
        }
    }

    #[test]
    fn decompression_bombs_are_refused() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        // 400 MB of zeros gzip to ~400 KB: far beyond the 64× + 64 MiB limit.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..400 {
            gz.write_all(&zeros).unwrap();
        }
        let p = d.path().join("bomb.pt.gz");
        std::fs::write(&p, gz.finish().unwrap()).unwrap();
        let e = read_bytes(&p).unwrap_err();
        assert!(e.to_string().contains("decompression bomb"), "{e}");
        // A real torch.save zip whose first storage entry is replaced by one that
        // inflates far beyond what its tensor declares.
        let orig = std::fs::read(fixture("zip_state.pth")).unwrap();
        let mut src = zip::ZipArchive::new(std::io::Cursor::new(&orig[..])).unwrap();
        let mut buf = std::io::Cursor::new(Vec::new());
        {
            let mut z = zip::ZipWriter::new(&mut buf);
            let deflate = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            for i in 0..src.len() {
                let mut f = src.by_index(i).unwrap();
                let name = f.name().to_string();
                z.start_file(name.as_str(), deflate).unwrap();
                if name.ends_with("/data/0") {
                    for _ in 0..64 {
                        z.write_all(&zeros).unwrap();
                    }
                } else {
                    std::io::copy(&mut f, &mut z).unwrap();
                }
            }
            z.finish().unwrap();
        }
        assert!(load_bytes(&orig).is_ok());
        let e = load_bytes(buf.get_ref()).err().expect("a bomb must be refused");
        let msg = format!("{e:#}");
        assert!(msg.contains("decompression bomb"), "{msg}");
    }

    /// Views that re-read one storage many times (a 4 MB storage viewed by many
    /// entries) stop at the materialisation budget instead of allocating gigabytes.
    #[test]
    fn shared_storages_cannot_expand_without_bound() {
        let storage = Rc::new(Storage { dtype: StorageDtype::F32, data: vec![0u8; 4 << 20] });
        let view = TensorRef { storage, offset: 0, size: vec![1 << 20], stride: vec![1] };
        let mut cache = StorageCache::default();
        let mut made = 0;
        let err = loop {
            match cache.tensor(&view) {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
            assert!(made < 1000, "no budget");
        };
        assert!(err.to_string().contains("expand"), "{err}");
        assert!(made >= 4, "legitimate re-use of a storage is allowed ({made})");
    }

    /// Every 8-byte field at the end of a legacy stream (the storage sizes and data)
    /// set to u64::MAX gives a clean error or a load, never a panic.
    #[test]
    fn legacy_storage_sizes_are_checked() {
        let orig = std::fs::read(fixture("legacy_state.pth")).unwrap();
        for p in orig.len().saturating_sub(400)..orig.len() - 8 {
            let mut b = orig.clone();
            b[p..p + 8].copy_from_slice(&u64::MAX.to_le_bytes());
            let _ = load_bytes(&b);
        }
    }
}
