//! Just enough of Python's pickle format to read FLAME model files (see tools/FLAME_FORMAT.md):
//! the binary opcodes of protocols 2–5 that Python 2 + numpy/chumpy/scipy and Python 3 + numpy
//! write for dicts of arrays. Nothing is executed: a class or function named in the file becomes
//! a [`Value::Global`], a call or `__new__` an [`Value::Object`] holding its arguments and its
//! `__setstate__` state, for the caller to interpret. Any other opcode (the text protocol 0,
//! persistent ids, out-of-band buffers, extension registries) is refused by name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// A value read from a pickle. Containers are shared (`Rc`) because a pickle refers back to
/// objects it built earlier (its memo) and may fill a dict or list after referring to it.
#[derive(Debug, Clone)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A Python 3 `str` (or py2 `unicode`).
    Str(Rc<str>),
    /// A py2 `str`, `bytes` or `bytearray`: raw bytes (py2 strings are latin-1 text or array data).
    Bytes(Rc<[u8]>),
    Tuple(Rc<[Value]>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Set(Rc<RefCell<Vec<Value>>>),
    /// A class or function named by `module` and `name`.
    Global(Rc<(String, String)>),
    /// The result of calling a global (`REDUCE`, `NEWOBJ`), with the state `BUILD` gave it.
    Object(Rc<RefCell<Object>>),
}

/// A Python object as the pickle describes it: what made it and the state it was given.
#[derive(Debug, Clone)]
pub struct Object {
    /// The class or function called: (module, name).
    pub class: (String, String),
    /// The positional arguments of the call.
    pub args: Vec<Value>,
    /// The argument of `BUILD` (`__setstate__`), if any.
    pub state: Option<Value>,
}

impl Value {
    /// The text of a `str` or a py2 byte string (decoded as latin-1, as Python 3 loads py2 pickles).
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => Some(b.iter().map(|&c| c as char).collect()),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The items of a tuple or a list.
    pub fn items(&self) -> Option<Vec<Value>> {
        match self {
            Value::Tuple(t) => Some(t.to_vec()),
            Value::List(l) => Some(l.borrow().clone()),
            _ => None,
        }
    }

    /// The value under the text key `key` in a dict.
    pub fn get(&self, key: &str) -> Option<Value> {
        match self {
            Value::Dict(d) => d.borrow().iter().find(|(k, _)| k.as_text().as_deref() == Some(key)).map(|(_, v)| v.clone()),
            _ => None,
        }
    }

    /// The text keys of a dict, in file order.
    pub fn keys(&self) -> Vec<String> {
        match self {
            Value::Dict(d) => d.borrow().iter().filter_map(|(k, _)| k.as_text()).collect(),
            _ => Vec::new(),
        }
    }

    /// A short description for error messages: the Python type as the file names it.
    pub fn describe(&self) -> String {
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
            Value::Set(_) => "set".into(),
            Value::Global(g) => format!("{}.{}", g.0, g.1),
            Value::Object(o) => {
                let o = o.borrow();
                format!("{}.{} object", o.class.0, o.class.1)
            }
        }
    }
}

/// Why a pickle could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PickleError {
    #[error("not a pickle of protocol 2 or later (FLAME model files are binary pickles)")]
    NotPickle,
    #[error("the file ends early, inside opcode {opcode} at byte {at} (truncated download?)")]
    Truncated { opcode: &'static str, at: usize },
    #[error("pickle opcode {name} ({code:#04x}) at byte {at} is not supported (only the binary protocols 2–5 are read)")]
    Unsupported { name: &'static str, code: u8, at: usize },
    #[error("damaged pickle at byte {at}: {reason}")]
    Damaged { at: usize, reason: String },
}

/// The name `pickletools` gives an opcode, for messages.
fn opcode_name(code: u8) -> &'static str {
    match code {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    opcode: u8,
    opcode_at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if n > self.data.len() - self.pos {
            return Err(PickleError::Truncated { opcode: opcode_name(self.opcode), at: self.opcode_at });
        }
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len_u32(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.bytes()?) as usize)
    }

    fn len_u64(&mut self) -> Result<usize, PickleError> {
        let n = u64::from_le_bytes(self.bytes()?);
        usize::try_from(n).map_err(|_| self.damaged(format!("length {n} too large")))
    }

    /// A newline-terminated line (GLOBAL's module and name).
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&c| c == b'\n').ok_or(PickleError::Truncated { opcode: "GLOBAL", at: self.opcode_at })?;
        self.pos += end + 1;
        Ok(rest[..end].iter().map(|&c| c as char).collect())
    }

    fn damaged(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Damaged { at: self.opcode_at, reason: reason.into() }
    }
}

/// Reads the pickle in `data` and returns the object it describes.
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    if data.len() < 2 || data[0] != 0x80 {
        return Err(PickleError::NotPickle);
    }
    let mut r = Reader { data, pos: 0, opcode: 0, opcode_at: 0 };
    let mut stack: Vec<Value> = Vec::new();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: HashMap<usize, Value> = HashMap::new();

    macro_rules! pop {
        () => {
            stack.pop().ok_or_else(|| r.damaged("stack underflow"))?
        };
    }
    macro_rules! top {
        () => {
            stack.last().ok_or_else(|| r.damaged("stack underflow"))?
        };
    }
    // Items pushed since the last MARK, which is removed.
    macro_rules! pop_mark {
        () => {{
            let mark = marks.pop().ok_or_else(|| r.damaged("no MARK"))?;
            if mark > stack.len() {
                return Err(r.damaged("MARK above the stack"));
            }
            stack.split_off(mark)
        }};
    }

    loop {
        r.opcode_at = r.pos;
        if r.pos >= data.len() {
            return Err(PickleError::Truncated { opcode: "STOP", at: r.pos });
        }
        let code = r.u8()?;
        r.opcode = code;
        match code {
            0x80 => {
                let protocol = r.u8()?;
                if !(2..=5).contains(&protocol) {
                    return Err(r.damaged(format!("protocol {protocol} (only 2–5 are read)")));
                }
            }
            0x95 => {
                r.bytes::<8>()?; // FRAME: a length hint
            }
            b'.' => return stack.pop().ok_or_else(|| r.damaged("nothing to return")),
            b'(' => marks.push(stack.len()),
            b'0' => {
                pop!();
            }
            b'1' => {
                let _ = pop_mark!();
            }
            b'2' => {
                let v = top!().clone();
                stack.push(v);
            }
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => stack.push(Value::Int(i32::from_le_bytes(r.bytes()?) as i64)),
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(u16::from_le_bytes(r.bytes()?) as i64)),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes.
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                if n > 8 {
                    return Err(r.damaged(format!("integer of {n} bytes")));
                }
                let mut value: i64 = 0;
                for (i, &b) in bytes.iter().enumerate() {
                    value |= (b as i64) << (8 * i);
                }
                if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                    value -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(value));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.bytes()?))),
            b'U' | b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.into()));
            }
            b'T' | b'B' => {
                let n = r.len_u32()?;
                stack.push(Value::Bytes(r.take(n)?.into()));
            }
            0x8e | 0x96 => {
                // BINBYTES8, BYTEARRAY8 (protocol 5 in-band buffers)
                let n = r.len_u64()?;
                stack.push(Value::Bytes(r.take(n)?.into()));
            }
            0x8c | b'X' | 0x8d => {
                let n = match code {
                    0x8c => r.u8()? as usize,
                    b'X' => r.len_u32()?,
                    _ => r.len_u64()?,
                };
                let text = std::str::from_utf8(r.take(n)?).map_err(|_| r.damaged("string not UTF-8"))?;
                stack.push(Value::Str(text.into()));
            }
            b')' => stack.push(Value::Tuple(Rc::from(Vec::new()))),
            b't' => {
                let items = pop_mark!();
                stack.push(Value::Tuple(items.into()));
            }
            0x85..=0x87 => {
                let n = (code - 0x84) as usize;
                if stack.len() < n {
                    return Err(r.damaged("stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items.into()));
            }
            b']' => stack.push(Value::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' => {
                let items = pop_mark!();
                stack.push(Value::List(Rc::new(RefCell::new(items))));
            }
            b'a' | b'e' => {
                let items = if code == b'a' { vec![pop!()] } else { pop_mark!() };
                match top!() {
                    Value::List(list) => list.borrow_mut().extend(items),
                    other => return Err(r.damaged(format!("APPEND to a {}", other.describe()))),
                }
            }
            b'}' => stack.push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
            b'd' => {
                let items = pop_mark!();
                stack.push(Value::Dict(Rc::new(RefCell::new(pairs(items, &r)?))));
            }
            b's' | b'u' => {
                let items = if code == b's' {
                    let value = pop!();
                    let key = pop!();
                    vec![key, value]
                } else {
                    pop_mark!()
                };
                let items = pairs(items, &r)?;
                match top!() {
                    Value::Dict(dict) => {
                        let mut dict = dict.borrow_mut();
                        for (k, v) in items {
                            // A later value for an existing text key replaces it, as in Python.
                            match k
                                .as_text()
                                .and_then(|key| dict.iter().position(|(old, _)| old.as_text().as_deref() == Some(key.as_str())))
                            {
                                Some(i) => dict[i].1 = v,
                                None => dict.push((k, v)),
                            }
                        }
                    }
                    other => return Err(r.damaged(format!("SETITEM on a {}", other.describe()))),
                }
            }
            0x8f => stack.push(Value::Set(Rc::new(RefCell::new(Vec::new())))),
            0x90 => {
                let items = pop_mark!();
                match top!() {
                    Value::Set(set) => set.borrow_mut().extend(items),
                    other => return Err(r.damaged(format!("ADDITEMS to a {}", other.describe()))),
                }
            }
            0x91 => {
                let items = pop_mark!();
                stack.push(Value::Set(Rc::new(RefCell::new(items))));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(global(module, name));
            }
            0x93 => {
                let name = pop!().as_text().ok_or_else(|| r.damaged("STACK_GLOBAL name is not a string"))?;
                let module = pop!().as_text().ok_or_else(|| r.damaged("STACK_GLOBAL module is not a string"))?;
                stack.push(global(module, name));
            }
            b'R' | 0x81 => {
                let args = pop!();
                let callable = pop!();
                let Value::Global(class) = callable else {
                    return Err(r.damaged(format!("call of a {}", callable.describe())));
                };
                let args = args.items().ok_or_else(|| r.damaged("call arguments are not a tuple"))?;
                stack.push(call(&class, args));
            }
            0x92 => {
                // NEWOBJ_EX: cls, args, kwargs (keyword arguments are kept nowhere; numpy, scipy
                // and chumpy never write any).
                let kwargs = pop!();
                let args = pop!();
                let callable = pop!();
                if !kwargs.keys().is_empty() {
                    return Err(r.damaged("NEWOBJ_EX with keyword arguments"));
                }
                let Value::Global(class) = callable else {
                    return Err(r.damaged(format!("call of a {}", callable.describe())));
                };
                let args = args.items().ok_or_else(|| r.damaged("call arguments are not a tuple"))?;
                stack.push(call(&class, args));
            }
            b'b' => {
                let state = pop!();
                match top!() {
                    Value::Object(object) => object.borrow_mut().state = Some(state),
                    other => return Err(r.damaged(format!("BUILD on a {}", other.describe()))),
                }
            }
            b'q' => {
                let i = r.u8()? as usize;
                memo.insert(i, top!().clone());
            }
            b'r' => {
                let i = r.len_u32()?;
                memo.insert(i, top!().clone());
            }
            0x94 => {
                let i = memo.len();
                memo.insert(i, top!().clone());
            }
            b'h' | b'j' => {
                let i = if code == b'h' { r.u8()? as usize } else { r.len_u32()? };
                let v = memo.get(&i).ok_or_else(|| r.damaged(format!("memo entry {i} missing")))?.clone();
                stack.push(v);
            }
            0x98 => {} // READONLY_BUFFER: only a flag on the buffer below
            _ => return Err(PickleError::Unsupported { name: opcode_name(code), code, at: r.opcode_at }),
        }
    }
}

fn pairs(items: Vec<Value>, r: &Reader) -> Result<Vec<(Value, Value)>, PickleError> {
    if !items.len().is_multiple_of(2) {
        return Err(r.damaged("odd number of dict items"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// A global by the name Python 3 would import (py2's `__builtin__` is `builtins`).
fn global(module: String, name: String) -> Value {
    let module = if module == "__builtin__" { "builtins".to_string() } else { module };
    Value::Global(Rc::new((module, name)))
}

/// A call of `class` with `args`. The few builtins that only rebuild plain data are evaluated
/// (`set`, `bytearray`, `_codecs.encode` with which Python 3 writes bytes at protocol 2); anything
/// else stays an [`Object`].
fn call(class: &(String, String), args: Vec<Value>) -> Value {
    let (module, name) = (class.0.as_str(), class.1.as_str());
    match (module, name, args.as_slice()) {
        ("builtins", "set" | "frozenset", [items]) => {
            if let Some(items) = items.items() {
                return Value::Set(Rc::new(RefCell::new(items)));
            }
        }
        ("builtins", "set" | "frozenset", []) => return Value::Set(Rc::new(RefCell::new(Vec::new()))),
        ("builtins", "bytearray" | "bytes", [Value::Bytes(b)]) => return Value::Bytes(b.clone()),
        ("builtins", "bytearray" | "bytes", []) => return Value::Bytes(Rc::from(Vec::new())),
        ("builtins" | "_codecs", "bytearray" | "bytes" | "encode", [Value::Str(text), Value::Str(encoding)])
            if matches!(encoding.as_ref(), "latin1" | "latin-1" | "iso-8859-1") =>
        {
            if let Some(bytes) = text.chars().map(|c| u8::try_from(c as u32).ok()).collect::<Option<Vec<u8>>>() {
                return Value::Bytes(bytes.into());
            }
        }
        _ => {}
    }
    Value::Object(Rc::new(RefCell::new(Object { class: class.clone(), args, state: None })))
}
