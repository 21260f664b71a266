//! A small Python pickle virtual machine, enough for the files PyTorch writes:
//! `torch.save` archives (protocol 2), TorchScript `data.pkl`, the legacy
//! `torch.save` stream that plain `pickle.dump` of a tensor embeds, and numpy scalars.
//!
//! Unknown classes never fail the load: they become opaque [`Value::Object`]s that
//! keep their constructor arguments and `__setstate__` state, so a caller only errors
//! when a value it actually needs has an unexpected shape. Nothing is ever executed.
//!
//! Files are untrusted, so the VM is built to fail cleanly, never to crash or hang:
//! it is iterative (no recursion on the file's nesting), every length and offset is
//! checked arithmetic, the object graph it returns is checked for cycles and for a
//! nesting depth of at most [`MAX_DEPTH`] (in time linear in its size, however much
//! of it is shared), and whatever it built is torn down iteratively, so a
//! million-deep or self-referencing structure cannot overflow the stack on drop.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::error::{bail, format_err, Context, Result};

/// Element types of PyTorch storages that famix can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageDtype {
    /// float64.
    F64,
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
    /// int64.
    I64,
    /// int32.
    I32,
    /// int16.
    I16,
    /// int8.
    I8,
    /// uint8.
    U8,
    /// bool.
    Bool,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// From a storage class name (`FloatStorage`) or a `torch.<dtype>` name (`float32`).
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" | "float64" | "double" => StorageDtype::F64,
            "FloatStorage" | "float32" | "float" => StorageDtype::F32,
            "HalfStorage" | "float16" | "half" => StorageDtype::F16,
            "BFloat16Storage" | "bfloat16" => StorageDtype::BF16,
            "LongStorage" | "int64" | "long" => StorageDtype::I64,
            "IntStorage" | "int32" | "int" => StorageDtype::I32,
            "ShortStorage" | "int16" | "short" => StorageDtype::I16,
            "CharStorage" | "int8" => StorageDtype::I8,
            "ByteStorage" | "uint8" => StorageDtype::U8,
            "BoolStorage" | "bool" => StorageDtype::Bool,
            _ => return None,
        })
    }
}

/// A storage: raw little-endian bytes of `dtype` elements.
#[derive(Debug)]
pub struct Storage {
    /// Element type.
    pub dtype: StorageDtype,
    /// Raw little-endian bytes.
    pub data: Vec<u8>,
}

/// A strided view on a storage, as `torch._utils._rebuild_tensor_v2` describes it.
#[derive(Debug, Clone)]
pub struct TensorRef {
    /// The storage viewed.
    pub storage: Rc<Storage>,
    /// Offset in elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides in elements.
    pub stride: Vec<i64>,
}

#[derive(Clone)]
/// An object built by REDUCE/BUILD of a class the reader does not know (kept opaque).
pub struct Object {
    /// Its module.
    pub module: String,
    /// Its class name.
    pub name: String,
    /// Constructor arguments.
    pub args: Vec<Value>,
    /// State set by BUILD.
    pub state: Option<Value>,
}

#[derive(Clone)]
/// A pickled value.
pub enum Value {
    /// None.
    None,
    /// A bool.
    Bool(bool),
    /// An int (famix refuses ints beyond i64).
    Int(i64),
    /// A float.
    Float(f64),
    /// A str.
    Str(String),
    /// bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Rc<Vec<Value>>),
    /// A list (shared, as pickle memo references are).
    List(Rc<RefCell<Vec<Value>>>),
    /// A dict, in insertion order.
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A global (module, name) that was not called.
    Global(String, String),
    /// An opaque object.
    Object(Rc<RefCell<Object>>),
    /// A tensor storage.
    Storage(Rc<Storage>),
    /// A tensor view of a storage.
    Tensor(Rc<TensorRef>),
    /// The pickle MARK sentinel; never escapes the VM.
    Mark,
}

/// Containers deeper than this print as `…` (values may be self-referencing).
const DEBUG_DEPTH: usize = 3;
/// Items of one container printed before `…`.
const DEBUG_ITEMS: usize = 8;

impl Value {
    /// Writes the value for messages, at most [`DEBUG_DEPTH`] containers deep and
    /// [`DEBUG_ITEMS`] items wide, so a self-referencing or huge structure from a
    /// hostile file prints in bounded time and stack.
    fn fmt_bounded(&self, f: &mut std::fmt::Formatter<'_>, depth: usize) -> std::fmt::Result {
        let items = |f: &mut std::fmt::Formatter<'_>, open: &str, close: &str, v: &[Value]| -> std::fmt::Result {
            if depth >= DEBUG_DEPTH {
                return write!(f, "{open}…{close}");
            }
            f.write_str(open)?;
            for (i, x) in v.iter().take(DEBUG_ITEMS).enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                x.fmt_bounded(f, depth + 1)?;
            }
            if v.len() > DEBUG_ITEMS {
                write!(f, ", … {} more", v.len() - DEBUG_ITEMS)?;
            }
            f.write_str(close)
        };
        match self {
            Value::Str(s) => write!(f, "{:?}", s.chars().take(80).collect::<String>()),
            Value::Bytes(b) => write!(f, "bytes[{}]", b.len()),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Tuple(t) => items(f, "(", ")", t),
            Value::List(l) => match l.try_borrow() {
                Ok(v) => items(f, "[", "]", &v),
                Err(_) => f.write_str("[…]"),
            },
            Value::Dict(d) => match d.try_borrow() {
                Ok(v) => {
                    let flat: Vec<Value> = v.iter().take(DEBUG_ITEMS).flat_map(|(k, x)| [k.clone(), x.clone()]).collect();
                    items(f, "{", "}", &flat)
                }
                Err(_) => f.write_str("{…}"),
            },
            Value::Object(o) => match o.try_borrow() {
                Ok(o) => {
                    write!(f, "{}.{}", o.module, o.name)?;
                    items(f, "(", ")", &o.args)
                }
                Err(_) => f.write_str("object(…)"),
            },
            other => f.write_str(&other.type_name()),
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.fmt_bounded(f, 0)
    }
}

impl std::fmt::Debug for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Value::Object(Rc::new(RefCell::new(self.clone()))).fmt(f)
    }
}

impl Value {
    /// The str, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The int (or bool), if this is one.
    pub(crate) fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    /// The float (ints and numpy scalars too), if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            // numpy scalars (e.g. the reference's best_score, a numpy.float64).
            Value::Object(o) => {
                let o = o.borrow();
                if o.module.starts_with("numpy") && o.name == "scalar" && o.args.len() == 2 {
                    if let Value::Bytes(b) = &o.args[1] {
                        if b.len() == 8 {
                            return Some(f64::from_le_bytes(b[..8].try_into().ok()?));
                        }
                        if b.len() == 4 {
                            return Some(f32::from_le_bytes(b[..4].try_into().ok()?) as f64);
                        }
                    }
                }
                None
            }
            _ => None,
        }
    }
    /// Items of a dict (also of an OrderedDict), with string keys.
    pub(crate) fn dict_items(&self) -> Option<Vec<(String, Value)>> {
        match self {
            Value::Dict(d) => Some(d.borrow().iter().filter_map(|(k, v)| k.as_str().map(|k| (k.to_string(), v.clone()))).collect()),
            _ => None,
        }
    }
    /// A dict's value under a string key.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }
    /// A list's or tuple's items.
    pub(crate) fn list_items(&self) -> Option<Vec<Value>> {
        match self {
            Value::List(l) => Some(l.borrow().clone()),
            Value::Tuple(t) => Some(t.as_ref().clone()),
            _ => None,
        }
    }
    /// A short type name for messages.
    pub(crate) fn type_name(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) => "int".into(),
            Value::Float(_) => "float".into(),
            Value::Str(_) => "str".into(),
            Value::Bytes(_) => "bytes".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global(m, n) => format!("{m}.{n}"),
            Value::Object(o) => {
                let o = o.borrow();
                format!("{}.{}", o.module, o.name)
            }
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
            Value::Mark => "mark".into(),
        }
    }
}

/// Resolves a pickle persistent id (PyTorch's storage references) to a value.
pub type PersistentLoad<'a> = dyn FnMut(&Value) -> Result<Value> + 'a;

/// The deepest nesting of containers a loaded value may have (PyTorch files need a
/// handful of levels; TorchScript module trees a few dozen).
pub const MAX_DEPTH: usize = 256;

/// Unpickles one pickle from `data` starting at `*pos`; advances `pos` past STOP.
pub fn load(data: &[u8], pos: &mut usize, persistent: &mut PersistentLoad) -> Result<Value> {
    let mut vm = Vm { data, pos: *pos, stack: Vec::new(), memo: HashMap::new(), persistent };
    let res = vm.run().and_then(|v| match check_graph(&v) {
        Ok(()) => Ok(v),
        Err(e) => {
            dismantle(vec![v], true);
            Err(e)
        }
    });
    *pos = vm.pos;
    let failed = res.is_err();
    let leftovers: Vec<Value> = vm.stack.drain(..).chain(vm.memo.drain().map(|(_, v)| v)).collect();
    dismantle(leftovers, failed);
    res
}

/// Tears values down without recursion: a container whose last handle this is gives
/// its children to a work list before it is dropped. With `force` every container is
/// emptied (also shared and self-referencing ones): only for values that are all
/// being discarded.
fn dismantle(values: Vec<Value>, force: bool) {
    let mut work = values;
    while let Some(v) = work.pop() {
        match v {
            Value::List(l) if force || Rc::strong_count(&l) == 1 => work.extend(std::mem::take(&mut *l.borrow_mut())),
            Value::Dict(d) if force || Rc::strong_count(&d) == 1 => {
                for (k, v) in std::mem::take(&mut *d.borrow_mut()) {
                    work.push(k);
                    work.push(v);
                }
            }
            Value::Tuple(t) => {
                if let Ok(items) = Rc::try_unwrap(t) {
                    work.extend(items);
                }
            }
            Value::Object(o) if force || Rc::strong_count(&o) == 1 => {
                let mut o = o.borrow_mut();
                work.extend(std::mem::take(&mut o.args));
                work.extend(o.state.take());
            }
            _ => {}
        }
    }
}

/// Children of a container (shallow handles), or None for a leaf.
fn children(v: &Value) -> Option<(usize, Vec<Value>)> {
    Some(match v {
        Value::List(l) => (Rc::as_ptr(l) as *const () as usize, l.borrow().clone()),
        Value::Tuple(t) => (Rc::as_ptr(t) as *const () as usize, t.as_ref().clone()),
        Value::Dict(d) => (Rc::as_ptr(d) as *const () as usize, d.borrow().iter().flat_map(|(k, v)| [k.clone(), v.clone()]).collect()),
        Value::Object(o) => {
            let o2 = o.borrow();
            (Rc::as_ptr(o) as *const () as usize, o2.args.iter().cloned().chain(o2.state.clone()).collect())
        }
        _ => return None,
    })
}

/// Refuses object graphs with a cycle or nested deeper than [`MAX_DEPTH`]. Each
/// container is examined once (shared sub-graphs are not re-walked), iteratively.
fn check_graph(top: &Value) -> Result<()> {
    enum State {
        OnPath,
        Done(usize),
    }
    let mut state: HashMap<usize, State> = HashMap::new();
    let Some((id, kids)) = children(top) else { return Ok(()) };
    // (container id, its children, next child, deepest child so far)
    let mut stack: Vec<(usize, Vec<Value>, usize, usize)> = vec![(id, kids, 0, 0)];
    state.insert(id, State::OnPath);
    while let Some(frame) = stack.last_mut() {
        if frame.2 == frame.1.len() {
            let (id, _, _, deepest) = stack.pop().unwrap_or_default();
            state.insert(id, State::Done(deepest + 1));
            if let Some(parent) = stack.last_mut() {
                parent.3 = parent.3.max(deepest + 1);
            }
            continue;
        }
        let child = frame.1[frame.2].clone();
        frame.2 += 1;
        let Some((cid, ckids)) = children(&child) else { continue };
        match state.get(&cid) {
            Some(State::OnPath) => bail!("pickle object graph contains a cycle (a container inside itself)"),
            Some(State::Done(d)) => {
                let d = *d;
                frame.3 = frame.3.max(d);
            }
            None => {
                if stack.len() >= MAX_DEPTH {
                    bail!("pickle nesting deeper than {MAX_DEPTH} levels");
                }
                state.insert(cid, State::OnPath);
                stack.push((cid, ckids, 0, 0));
            }
        }
    }
    Ok(())
}

/// Unpickles a buffer holding exactly one pickle and no persistent ids.
pub fn load_plain(data: &[u8]) -> Result<Value> {
    let mut pos = 0;
    load(data, &mut pos, &mut |pid| bail!("unexpected persistent id {pid:?} in a plain pickle"))
}

struct Vm<'a, 'p> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
    persistent: &'p mut PersistentLoad<'p>,
}

impl<'a, 'p> Vm<'a, 'p> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.data.len() - self.pos {
            bail!("pickle truncated at byte {} (wanted {n} more bytes)", self.pos);
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn line(&mut self) -> Result<&'a str> {
        let start = self.pos;
        while self.pos < self.data.len() && self.data[self.pos] != b'\n' {
            self.pos += 1;
        }
        if self.pos >= self.data.len() {
            bail!("pickle truncated inside a text line");
        }
        let s = std::str::from_utf8(&self.data[start..self.pos]).context("pickle text line is not UTF-8")?;
        self.pos += 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| format_err!("pickle stack underflow"))
    }
    fn top(&mut self) -> Result<&mut Value> {
        self.stack.last_mut().ok_or_else(|| format_err!("pickle stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let idx = self.stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| format_err!("pickle MARK not found"))?;
        let items = self.stack.split_off(idx + 1);
        self.stack.pop();
        Ok(items)
    }
    fn memo_get(&self, idx: u32) -> Result<Value> {
        self.memo.get(&idx).cloned().ok_or_else(|| format_err!("pickle memo key {idx} missing"))
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.u64()?; // FRAME
                }
                b'.' => return self.pop(), // STOP
                b'(' => self.stack.push(Value::Mark),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'I' => {
                    let l = self.line()?;
                    let v = match l {
                        "00" => Value::Bool(false),
                        "01" => Value::Bool(true),
                        _ => Value::Int(l.parse().with_context(|| format!("bad pickle INT {l:?}"))?),
                    };
                    self.stack.push(v)
                }
                b'L' => {
                    let l = self.line()?.trim_end_matches('L');
                    self.stack.push(Value::Int(l.parse().with_context(|| format!("bad pickle LONG {l:?}"))?))
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(long_from_bytes(b))
                }
                0x8b => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?;
                    self.stack.push(long_from_bytes(b))
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack.push(Value::Float(f64::from_be_bytes(b.try_into().unwrap())))
                }
                b'F' => {
                    let l = self.line()?;
                    self.stack.push(Value::Float(l.parse().with_context(|| format!("bad pickle FLOAT {l:?}"))?))
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?;
                    self.stack.push(Value::Str(String::from_utf8_lossy(s).into_owned()))
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?;
                    self.stack.push(Value::Str(String::from_utf8_lossy(s).into_owned()))
                }
                0x8d => {
                    let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
                    let s = self.take(n)?;
                    self.stack.push(Value::Str(String::from_utf8_lossy(s).into_owned()))
                }
                b'V' => {
                    let l = self.line()?;
                    self.stack.push(Value::Str(l.to_string()))
                }
                b'T' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?;
                    self.stack.push(Value::Bytes(s.to_vec()))
                }
                b'U' => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?;
                    self.stack.push(Value::Bytes(s.to_vec()))
                }
                b'B' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?;
                    self.stack.push(Value::Bytes(s.to_vec()))
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    let s = self.take(n)?;
                    self.stack.push(Value::Bytes(s.to_vec()))
                }
                0x8e => {
                    let n = usize::try_from(self.u64()?).unwrap_or(usize::MAX);
                    let s = self.take(n)?;
                    self.stack.push(Value::Bytes(s.to_vec()))
                }
                b'S' => {
                    let l = self.line()?;
                    let s = l.trim_matches(|c| c == '\'' || c == '"');
                    self.stack.push(Value::Str(s.to_string()))
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(vec![]))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85 => {
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a])))
                }
                0x86 => {
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a, b])))
                }
                0x87 => {
                    let c = self.pop()?;
                    let b = self.pop()?;
                    let a = self.pop()?;
                    self.stack.push(Value::Tuple(Rc::new(vec![a, b, c])))
                }
                b']' => self.stack.push(Value::List(Rc::new(RefCell::new(vec![])))),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        other => bail!("pickle APPEND on {}", other.type_name()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => bail!("pickle APPENDS on {}", other.type_name()),
                    }
                }
                b'}' => self.stack.push(Value::Dict(Rc::new(RefCell::new(vec![])))),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Rc::new(RefCell::new(pairs(items)?))))
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    dict_set(self.top()?, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let p = pairs(items)?;
                    dict_set(self.top()?, p)?;
                }
                0x8f => self.stack.push(Value::List(Rc::new(RefCell::new(vec![])))), // EMPTY_SET
                0x90 => {
                    // ADDITEMS
                    let items = self.pop_mark()?;
                    if let Value::List(l) = self.top()? {
                        l.borrow_mut().extend(items)
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                b'p' => {
                    let l = self.line()?;
                    let idx: u32 = l.parse().context("bad pickle PUT")?;
                    let v = self.top()?.clone();
                    self.memo.insert(idx, v);
                }
                b'q' => {
                    let idx = self.u8()? as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(idx, v);
                }
                b'r' => {
                    let idx = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(idx, v);
                }
                0x94 => {
                    let idx = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(idx, v);
                }
                b'g' => {
                    let l = self.line()?;
                    let idx: u32 = l.parse().context("bad pickle GET")?;
                    let v = self.memo_get(idx)?;
                    self.stack.push(v)
                }
                b'h' => {
                    let idx = self.u8()? as u32;
                    let v = self.memo_get(idx)?;
                    self.stack.push(v)
                }
                b'j' => {
                    let idx = self.u32()?;
                    let v = self.memo_get(idx)?;
                    self.stack.push(v)
                }
                b'c' => {
                    let module = self.line()?.to_string();
                    let name = self.line()?.to_string();
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => bail!("pickle STACK_GLOBAL with non-string operands"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let args = match args {
                        Value::Tuple(t) => t.as_ref().clone(),
                        other => bail!("pickle REDUCE with {} arguments", other.type_name()),
                    };
                    let v = self.call(func, args)?;
                    self.stack.push(v)
                }
                0x81 => {
                    // NEWOBJ
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = args.list_items().unwrap_or_default();
                    let v = self.call(cls, args)?;
                    self.stack.push(v)
                }
                0x92 => {
                    // NEWOBJ_EX
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let args = args.list_items().unwrap_or_default();
                    let v = self.call(cls, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    let state = self.pop()?;
                    // OrderedDicts and tensors get attribute state famix does not need.
                    if let Value::Object(o) = self.top()? {
                        o.borrow_mut().state = Some(state);
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    // A persistent id is a small tuple of names and numbers; refuse a
                    // self-referencing or deep one before anything walks it.
                    if let Err(e) = check_graph(&pid) {
                        dismantle(vec![pid], true);
                        return Err(e.context("persistent id"));
                    }
                    let v = (self.persistent)(&pid)?;
                    self.stack.push(v)
                }
                b'P' => {
                    let l = self.line()?.to_string();
                    let v = (self.persistent)(&Value::Str(l))?;
                    self.stack.push(v)
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v)
                }
                b'1' => {
                    self.pop_mark()?;
                }
                other => bail!("unsupported pickle opcode 0x{other:02x} at byte {}", self.pos - 1),
            }
        }
    }

    /// REDUCE / NEWOBJ: the few callables PyTorch files need are interpreted; the rest
    /// become opaque objects.
    fn call(&mut self, func: Value, args: Vec<Value>) -> Result<Value> {
        let (module, name) = match &func {
            Value::Global(m, n) => (m.as_str(), n.as_str()),
            other => bail!("pickle call of a non-global {}", other.type_name()),
        };
        match (module, name) {
            ("collections", "OrderedDict") | ("builtins", "dict") | ("__builtin__", "dict") => {
                let items = match args.first() {
                    Some(Value::List(l)) => l
                        .borrow()
                        .iter()
                        .filter_map(|p| match p {
                            Value::Tuple(t) if t.len() == 2 => Some((t[0].clone(), t[1].clone())),
                            _ => None,
                        })
                        .collect(),
                    _ => vec![],
                };
                Ok(Value::Dict(Rc::new(RefCell::new(items))))
            }
            // The first pass over a legacy stream has placeholders for storages whose
            // bytes come after the pickle; its tensors are rebuilt in the second pass.
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor")
                if args.first().and_then(|a| a.as_str()).is_some_and(|s| s.starts_with(LEGACY_PLACEHOLDER)) =>
            {
                Ok(Value::None)
            }
            ("torch._utils", "_rebuild_tensor_v2") | ("torch._utils", "_rebuild_tensor") => rebuild_tensor(&args),
            ("torch._utils", "_rebuild_parameter") | ("torch._utils", "_rebuild_parameter_with_state") => {
                args.into_iter().next().ok_or_else(|| format_err!("_rebuild_parameter without data"))
            }
            ("torch.storage", "_load_from_bytes") => match args.first() {
                Some(Value::Bytes(b)) => legacy_load(b).context("reading an embedded legacy torch.save stream"),
                _ => bail!("_load_from_bytes without bytes"),
            },
            // Protocol 2 pickles `bytes` as _codecs.encode(latin-1 text, 'latin1').
            ("_codecs", "encode") => match (args.first(), args.get(1).and_then(|v| v.as_str())) {
                (Some(Value::Str(s)), Some("latin1" | "latin-1")) => Ok(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect())),
                (Some(Value::Str(s)), _) => Ok(Value::Bytes(s.as_bytes().to_vec())),
                _ => bail!("_codecs.encode without text"),
            },
            ("builtins", "set") | ("builtins", "frozenset") | ("builtins", "list") => {
                Ok(args.into_iter().next().unwrap_or(Value::List(Rc::new(RefCell::new(vec![])))))
            }
            ("builtins", "tuple") => Ok(Value::Tuple(Rc::new(args.into_iter().next().and_then(|v| v.list_items()).unwrap_or_default()))),
            _ => Ok(Value::Object(Rc::new(RefCell::new(Object { module: module.to_string(), name: name.to_string(), args, state: None })))),
        }
    }
}

fn long_from_bytes(b: &[u8]) -> Value {
    if b.is_empty() {
        return Value::Int(0);
    }
    if b.len() > 8 {
        // Too large for i64 (e.g. the legacy magic number); keep the low bits.
        let mut buf = [0u8; 8];
        buf.copy_from_slice(&b[..8]);
        return Value::Int(i64::from_le_bytes(buf));
    }
    let neg = b[b.len() - 1] & 0x80 != 0;
    let mut buf = if neg { [0xffu8; 8] } else { [0u8; 8] };
    buf[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(buf))
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        bail!("pickle dict with an odd number of items");
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn dict_set(target: &mut Value, items: Vec<(Value, Value)>) -> Result<()> {
    match target {
        Value::Dict(d) => {
            let mut d = d.borrow_mut();
            for (k, v) in items {
                if let Some(slot) = d.iter_mut().find(|(ek, _)| keys_equal(ek, &k)) {
                    slot.1 = v;
                } else {
                    d.push((k, v));
                }
            }
            Ok(())
        }
        // e.g. SETITEMS into an opaque object's __dict__: keep it as state.
        Value::Object(o) => {
            let mut o = o.borrow_mut();
            let st = o.state.get_or_insert_with(|| Value::Dict(Rc::new(RefCell::new(vec![]))));
            dict_set(st, items)
        }
        other => bail!("pickle SETITEM(S) on {}", other.type_name()),
    }
}

fn keys_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        _ => false,
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>> {
    v.list_items()
        .ok_or_else(|| format_err!("tensor {what} is a {}, not a tuple", v.type_name()))?
        .iter()
        .map(|x| x.as_int().ok_or_else(|| format_err!("tensor {what} holds a non-integer")))
        .collect()
}

fn rebuild_tensor(args: &[Value]) -> Result<Value> {
    if args.len() < 4 {
        bail!("_rebuild_tensor_v2 with {} arguments", args.len());
    }
    let storage = match &args[0] {
        Value::Storage(s) => s.clone(),
        other => bail!("_rebuild_tensor_v2 storage is a {}", other.type_name()),
    };
    let offset = args[1].as_int().ok_or_else(|| format_err!("tensor offset is not an integer"))?;
    let size = ints(&args[2], "size")?;
    let stride = ints(&args[3], "stride")?;
    let numel_storage = (storage.data.len() / storage.dtype.size()) as i128;
    check_view(offset, &size, &stride, numel_storage)?;
    Ok(Value::Tensor(Rc::new(TensorRef { storage, offset: offset as usize, size, stride })))
}

/// Validates a strided view against its storage now, so later reads cannot go out of
/// bounds: non-negative offset, sizes and strides, as many strides as sizes, the last
/// element inside the storage (in 128-bit arithmetic, so no product can overflow).
fn check_view(offset: i64, size: &[i64], stride: &[i64], numel_storage: i128) -> Result<()> {
    if offset < 0 || size.len() != stride.len() || size.iter().chain(stride).any(|&v| v < 0) || size.len() > 64 {
        bail!("invalid tensor view (offset {offset}, size {size:?}, stride {stride:?})");
    }
    if size.contains(&0) {
        return Ok(());
    }
    let last = size.iter().zip(stride).try_fold(offset as i128, |acc, (&s, &st)| acc.checked_add((s as i128 - 1) * st as i128));
    match last {
        Some(l) if l < numel_storage => Ok(()),
        _ => bail!(
            "tensor view (offset {offset}, size {size:?}, stride {stride:?}) exceeds its storage of {numel_storage} elements (file truncated?)"
        ),
    }
}

/// Storage dtype from the storage-type global in a persistent id.
pub(crate) fn storage_dtype(v: &Value) -> Result<StorageDtype> {
    match v {
        Value::Global(_, name) => StorageDtype::from_name(name).ok_or_else(|| format_err!("unsupported storage type {name}")),
        other => bail!("storage type is a {}", other.type_name()),
    }
}

/// Stands for a legacy storage in the first pass over the object pickle.
const LEGACY_PLACEHOLDER: &str = "\u{0}famix-storage:";

/// Reads the legacy (pre-zip) `torch.save` stream: magic, protocol, sys info, the
/// object pickle, the storage keys, then each storage's raw bytes.
pub(crate) fn legacy_load(data: &[u8]) -> Result<Value> {
    let mut pos = 0;
    let magic = load_plain_at(data, &mut pos)?;
    if magic.as_int().is_none() {
        bail!("not a legacy torch.save stream (bad magic)");
    }
    let _protocol = load_plain_at(data, &mut pos)?;
    let _sys_info = load_plain_at(data, &mut pos)?;
    // Storages are referenced before their bytes appear: collect placeholders first.
    let mut pending: Vec<(String, StorageDtype, usize)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let obj_start = pos;
    {
        let mut pl = |pid: &Value| -> Result<Value> {
            let t = pid.list_items().ok_or_else(|| format_err!("legacy persistent id is not a tuple"))?;
            if t.first().and_then(|v| v.as_str()) != Some("storage") || t.len() < 5 {
                bail!("unsupported legacy persistent id");
            }
            let dtype = storage_dtype(&t[1])?;
            let key = t[2].as_str().ok_or_else(|| format_err!("storage key is not a string"))?.to_string();
            let numel = t[4].as_int().unwrap_or(0) as usize;
            if seen.insert(key.clone()) {
                pending.push((key.clone(), dtype, numel));
            }
            Ok(Value::Str(format!("{LEGACY_PLACEHOLDER}{key}")))
        };
        load(data, &mut pos, &mut pl)?;
    }
    let keys = load_plain_at(data, &mut pos)?;
    let keys: Vec<String> = keys
        .list_items()
        .ok_or_else(|| format_err!("legacy storage key list missing"))?
        .iter()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    let mut storages: HashMap<String, Rc<Storage>> = HashMap::new();
    for key in &keys {
        let (_, dtype, _) =
            pending.iter().find(|(k, _, _)| k == key).ok_or_else(|| format_err!("legacy storage {key} was never referenced"))?;
        if data.len() - pos < 8 {
            bail!("legacy torch.save stream truncated before storage {key}");
        }
        let n = u64::from_le_bytes(data[pos..pos + 8].try_into()?);
        pos += 8;
        let nbytes = usize::try_from(n).ok().and_then(|n| n.checked_mul(dtype.size()));
        let nbytes = match nbytes {
            Some(b) if b <= data.len() - pos => b,
            _ => bail!("legacy torch.save stream truncated inside storage {key} ({n} elements declared)"),
        };
        storages.insert(key.clone(), Rc::new(Storage { dtype: *dtype, data: data[pos..pos + nbytes].to_vec() }));
        pos += nbytes;
    }
    // Second pass over the object pickle, now with the storages available.
    let mut p2 = obj_start;
    load(data, &mut p2, &mut |pid: &Value| {
        let t = pid.list_items().unwrap_or_default();
        let key = t.get(2).and_then(|v| v.as_str()).unwrap_or_default();
        storages.get(key).cloned().map(Value::Storage).ok_or_else(|| format_err!("legacy storage {key} has no data"))
    })
}

fn load_plain_at(data: &[u8], pos: &mut usize) -> Result<Value> {
    load(data, pos, &mut |_| bail!("unexpected persistent id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pickle(body: &[u8]) -> Vec<u8> {
        let mut v = vec![0x80, 2];
        v.extend_from_slice(body);
        v.push(b'.');
        v
    }

    fn binput(i: u32) -> Vec<u8> {
        let mut v = vec![b'r'];
        v.extend_from_slice(&i.to_le_bytes());
        v
    }

    fn binget(i: u32) -> Vec<u8> {
        let mut v = vec![b'j'];
        v.extend_from_slice(&i.to_le_bytes());
        v
    }

    /// A list nested `levels` deep (each level memoised and appended to the previous).
    fn nested_lists(levels: u32) -> Vec<u8> {
        let mut body = vec![b']'];
        body.extend(binput(0));
        for i in 1..levels {
            body.extend(binget(i - 1));
            body.push(b']');
            body.extend(binput(i));
            body.push(b'a');
            body.push(b'0');
        }
        pickle(&body)
    }

    #[test]
    fn a_million_deep_nesting_is_refused_without_overflowing_the_stack() {
        let e = load_plain(&nested_lists(1_000_000)).unwrap_err();
        assert!(e.to_string().contains("deeper than"), "{e}");
        // Shallow nesting still loads.
        let v = load_plain(&nested_lists(100)).unwrap();
        assert!(matches!(v, Value::List(_)));
    }

    #[test]
    fn self_referencing_containers_are_refused() {
        let mut body = vec![b']'];
        body.extend(binput(0));
        body.extend(binget(0));
        body.push(b'a');
        let e = load_plain(&pickle(&body)).unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    /// A persistent id that contains itself (as a crafted .pth or .pkl can) is
    /// refused before the loader or an error message walks it.
    #[test]
    fn self_referencing_persistent_ids_are_refused() {
        let mut body = vec![b']'];
        body.extend(binput(0));
        body.extend(binget(0));
        body.push(b'a');
        body.push(b'Q');
        let data = pickle(&body);
        let e = load_plain(&data).unwrap_err();
        assert!(format!("{e:#}").contains("persistent id") && format!("{e:#}").contains("cycle"), "{e:#}");
        let mut called = false;
        let mut pos = 0;
        assert!(load(&data, &mut pos, &mut |_| {
            called = true;
            Ok(Value::None)
        })
        .is_err());
        assert!(!called, "the persistent loader must not see a cyclic id");
    }

    /// Debug output of a self-referencing value is bounded.
    #[test]
    fn debug_of_a_cyclic_value_terminates() {
        let l = Rc::new(RefCell::new(Vec::new()));
        l.borrow_mut().push(Value::List(l.clone()));
        l.borrow_mut().push(Value::Int(7));
        let s = format!("{:?}", Value::List(l.clone()));
        assert!(s.starts_with("[[[") && s.contains('…') && s.len() < 200, "{s}");
        l.borrow_mut().clear(); // break the cycle so the test does not leak
    }

    #[test]
    fn huge_declared_lengths_are_errors_not_panics() {
        for op in [0x8du8, 0x8e] {
            let mut body = vec![op];
            body.extend_from_slice(&u64::MAX.to_le_bytes());
            let e = load_plain(&pickle(&body)).unwrap_err();
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        let mut body = vec![b'X'];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(load_plain(&pickle(&body)).is_err());
    }

    /// A DAG with 2^60 paths but 61 nodes is checked in linear time.
    #[test]
    fn shared_subgraphs_are_checked_once() {
        let mut body = vec![b')'];
        body.extend(binput(0));
        for i in 1..=60u32 {
            body.extend(binget(i - 1));
            body.extend(binget(i - 1));
            body.push(0x86); // TUPLE2
            body.extend(binput(i));
            body.push(b'0');
        }
        body.extend(binget(60));
        let t = std::time::Instant::now();
        let v = load_plain(&pickle(&body)).unwrap();
        assert!(matches!(v, Value::Tuple(_)));
        assert!(t.elapsed().as_secs() < 5, "graph check took {:?}", t.elapsed());
    }

    #[test]
    fn tensor_views_outside_their_storage_or_negative_are_refused() {
        assert!(check_view(0, &[2, 3], &[3, 1], 6).is_ok());
        assert!(check_view(1, &[2, 3], &[3, 1], 6).is_err());
        assert!(check_view(-1, &[2], &[1], 6).is_err());
        assert!(check_view(0, &[2], &[-1], 6).is_err());
        assert!(check_view(0, &[2, 2], &[1], 6).is_err());
        assert!(check_view(0, &[i64::MAX, i64::MAX], &[i64::MAX, i64::MAX], 6).is_err());
        assert!(check_view(0, &[0, 5], &[5, 1], 0).is_ok());
    }
}
