//! A small, strict CBOR (RFC 8949) decoder for exactly what an `attObj` needs, and the
//! `{fmt, attStmt: {x5c}}` shape read from it.
//!
//! Every length comes from the peer, so nothing is allocated from a declared length: strings are
//! copied only after their length was checked against the bytes that remain, arrays and maps grow
//! one decoded item at a time, and nesting, item count and input size are capped.

use super::AttestError;

/// The largest `attObj` accepted. Apple's is a leaf and one intermediate (about 2 KiB).
pub(super) const MAX_INPUT: usize = 64 * 1024;
/// Deepest nesting of arrays, maps and tags.
const MAX_DEPTH: usize = 16;
/// Most data items in one `attObj` (Apple's has about ten).
const MAX_ITEMS: usize = 1024;
/// Most certificates in `x5c`.
pub(super) const MAX_X5C: usize = 8;

/// One decoded data item (RFC 8949 §3).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Item {
    Unsigned(u64),
    Negative(u64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Item>),
    Map(Vec<(Item, Item)>),
    Tag(u64, Box<Item>),
    /// false, true, null, undefined and other simple values (RFC 8949 §3.3).
    Simple(u8),
    /// A half, single or double float, kept as its bits.
    Float(u64),
}

impl Item {
    fn kind(&self) -> &'static str {
        match self {
            Item::Unsigned(_) | Item::Negative(_) => "an integer",
            Item::Bytes(_) => "a byte string",
            Item::Text(_) => "a text string",
            Item::Array(_) => "an array",
            Item::Map(_) => "a map",
            Item::Tag(..) => "a tagged item",
            Item::Simple(_) => "a simple value",
            Item::Float(_) => "a float",
        }
    }

    /// The value under the text key `key` of a map.
    fn get<'a>(entries: &'a [(Item, Item)], key: &str) -> Option<&'a Item> {
        entries
            .iter()
            .find(|(k, _)| matches!(k, Item::Text(t) if t == key))
            .map(|(_, v)| v)
    }
}

fn err(what: impl Into<String>) -> AttestError {
    AttestError::Cbor(what.into())
}

/// What the head of a data item (RFC 8949 §3) says.
enum Head {
    /// Major type, additional information and the argument.
    Definite(u8, u8, u64),
    /// Major type 2–5 with additional information 31 (§3.2).
    Indefinite(u8),
    /// The "break" stop code 0xff (§3.2.1).
    Break,
}

struct Decoder<'a> {
    input: &'a [u8],
    pos: usize,
    items: usize,
}

impl<'a> Decoder<'a> {
    fn remaining(&self) -> usize {
        self.input.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], AttestError> {
        if n > self.remaining() {
            return Err(err(format!(
                "truncated: {n} bytes needed at offset {}, {} remain",
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn head(&mut self) -> Result<Head, AttestError> {
        let at = self.pos;
        let first = self.take(1)?[0];
        let major = first >> 5;
        let info = first & 0x1f;
        let argument = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                self.take(n)?
                    .iter()
                    .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            }
            28..=30 => {
                return Err(err(format!(
                    "reserved additional information {info} at offset {at}"
                )))
            }
            _ => {
                return match major {
                    2..=5 => Ok(Head::Indefinite(major)),
                    7 => Ok(Head::Break),
                    _ => Err(err(format!(
                        "major type {major} cannot have an indefinite length (offset {at})"
                    ))),
                };
            }
        };
        Ok(Head::Definite(major, info, argument))
    }

    /// A declared string length, refused when it is more than what remains.
    fn length(&self, declared: u64) -> Result<usize, AttestError> {
        match usize::try_from(declared) {
            Ok(n) if n <= self.remaining() => Ok(n),
            _ => Err(err(format!(
                "declared length {declared} at offset {} exceeds the {} bytes that remain",
                self.pos,
                self.remaining()
            ))),
        }
    }

    /// A declared array or map size: each element takes at least one byte, so a count above
    /// what remains is refused before anything is decoded.
    fn count(&self, declared: u64, bytes_each: u64) -> Result<(), AttestError> {
        if declared.saturating_mul(bytes_each) > self.remaining() as u64 {
            return Err(err(format!(
                "declared {declared} elements at offset {} but only {} bytes remain",
                self.pos,
                self.remaining()
            )));
        }
        Ok(())
    }

    fn item(&mut self, depth: usize) -> Result<Item, AttestError> {
        if depth > MAX_DEPTH {
            return Err(err(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.items += 1;
        if self.items > MAX_ITEMS {
            return Err(err(format!("more than {MAX_ITEMS} data items")));
        }
        let at = self.pos;
        match self.head()? {
            Head::Break => Err(err(format!("unexpected break at offset {at}"))),
            Head::Indefinite(major) => self.indefinite(major, depth),
            Head::Definite(major, info, argument) => self.definite(major, info, argument, depth),
        }
    }

    fn definite(
        &mut self,
        major: u8,
        info: u8,
        argument: u64,
        depth: usize,
    ) -> Result<Item, AttestError> {
        Ok(match major {
            0 => Item::Unsigned(argument),
            1 => Item::Negative(argument),
            2 => Item::Bytes(self.take(self.length(argument)?)?.to_vec()),
            3 => Item::Text(self.text(argument)?),
            4 => {
                self.count(argument, 1)?;
                let mut out = Vec::new();
                for _ in 0..argument {
                    out.push(self.item(depth + 1)?);
                }
                Item::Array(out)
            }
            5 => {
                self.count(argument, 2)?;
                let mut out: Vec<(Item, Item)> = Vec::new();
                for _ in 0..argument {
                    let key = self.item(depth + 1)?;
                    let value = self.item(depth + 1)?;
                    Self::insert(&mut out, key, value)?;
                }
                Item::Map(out)
            }
            6 => Item::Tag(argument, Box::new(self.item(depth + 1)?)),
            // §3.3: additional information below 24 or 24 is a simple value (the one-byte form
            // only for 32 and above), 25–27 a half, single or double float.
            _ => match info {
                0..=23 => Item::Simple(info),
                24 if argument >= 32 => Item::Simple(argument as u8),
                24 => return Err(err(format!("simple value {argument} in the two-byte form"))),
                _ => Item::Float(argument),
            },
        })
    }

    fn text(&mut self, declared: u64) -> Result<String, AttestError> {
        let at = self.pos;
        let bytes = self.take(self.length(declared)?)?;
        // §5.3.1: a text string must be valid UTF-8.
        String::from_utf8(bytes.to_vec())
            .map_err(|_| err(format!("text string at offset {at} is not UTF-8")))
    }

    /// §3.2.3: an indefinite-length string is definite chunks of the same major type up to a
    /// break; §3.2.2: indefinite arrays and maps run up to a break.
    fn indefinite(&mut self, major: u8, depth: usize) -> Result<Item, AttestError> {
        match major {
            2 | 3 => {
                let mut bytes = Vec::new();
                loop {
                    let at = self.pos;
                    match self.head()? {
                        Head::Break => break,
                        Head::Definite(m, _, n) if m == major => {
                            self.items += 1;
                            if self.items > MAX_ITEMS {
                                return Err(err(format!("more than {MAX_ITEMS} data items")));
                            }
                            let n = self.length(n)?;
                            bytes.extend_from_slice(self.take(n)?);
                        }
                        _ => {
                            return Err(err(format!(
                                "chunk at offset {at} of an indefinite-length string is not a \
                                 definite string of the same type"
                            )))
                        }
                    }
                }
                if major == 2 {
                    Ok(Item::Bytes(bytes))
                } else {
                    String::from_utf8(bytes)
                        .map(Item::Text)
                        .map_err(|_| err("indefinite-length text string is not UTF-8"))
                }
            }
            4 => {
                let mut out = Vec::new();
                while !self.at_break()? {
                    out.push(self.item(depth + 1)?);
                }
                Ok(Item::Array(out))
            }
            _ => {
                let mut out = Vec::new();
                while !self.at_break()? {
                    let key = self.item(depth + 1)?;
                    if self.at_break_peek()? {
                        return Err(err("indefinite-length map has a key without a value"));
                    }
                    let value = self.item(depth + 1)?;
                    Self::insert(&mut out, key, value)?;
                }
                Ok(Item::Map(out))
            }
        }
    }

    fn at_break_peek(&self) -> Result<bool, AttestError> {
        match self.input.get(self.pos) {
            Some(b) => Ok(*b == 0xff),
            None => Err(err("truncated: an indefinite-length item has no break")),
        }
    }

    /// Consumes a break if one is next.
    fn at_break(&mut self) -> Result<bool, AttestError> {
        let at_break = self.at_break_peek()?;
        if at_break {
            self.pos += 1;
        }
        Ok(at_break)
    }

    /// §5.6: a map with duplicate keys is not valid; refuse it rather than pick one.
    fn insert(map: &mut Vec<(Item, Item)>, key: Item, value: Item) -> Result<(), AttestError> {
        if map.iter().any(|(k, _)| *k == key) {
            return Err(err(format!("map has a duplicate key ({})", key.kind())));
        }
        map.push((key, value));
        Ok(())
    }
}

/// Decodes one complete CBOR data item; trailing bytes are refused.
pub(super) fn decode(input: &[u8]) -> Result<Item, AttestError> {
    if input.len() > MAX_INPUT {
        return Err(err(format!(
            "{} bytes; at most {MAX_INPUT} are accepted",
            input.len()
        )));
    }
    if input.is_empty() {
        return Err(err("empty"));
    }
    let mut decoder = Decoder {
        input,
        pos: 0,
        items: 0,
    };
    let item = decoder.item(0)?;
    if decoder.remaining() != 0 {
        return Err(err(format!(
            "{} trailing bytes after the attestation object",
            decoder.remaining()
        )));
    }
    Ok(item)
}

/// The certificates of an Apple attestation statement, leaf first
/// (draft-ietf-acme-device-attest §4: `attObj` is the WebAuthn attestation object,
/// `{fmt: "apple", attStmt: {x5c: [leaf, intermediates…]}}`; other keys such as `authData` are
/// ignored).
pub(super) fn apple_x5c(att_obj: &[u8]) -> Result<Vec<Vec<u8>>, AttestError> {
    let Item::Map(top) = decode(att_obj)? else {
        return Err(err("the attestation object is not a map"));
    };
    match Item::get(&top, "fmt") {
        None => return Err(err("the attestation object has no \"fmt\"")),
        Some(Item::Text(fmt)) if fmt == "apple" => {}
        Some(Item::Text(fmt)) => return Err(AttestError::Format(fmt.clone())),
        Some(other) => return Err(err(format!("\"fmt\" is {}, not text", other.kind()))),
    }
    let statement = match Item::get(&top, "attStmt") {
        None => return Err(err("the attestation object has no \"attStmt\"")),
        Some(Item::Map(statement)) => statement,
        Some(other) => return Err(err(format!("\"attStmt\" is {}, not a map", other.kind()))),
    };
    let x5c = match Item::get(statement, "x5c") {
        None => return Err(err("\"attStmt\" has no \"x5c\"")),
        Some(Item::Array(x5c)) => x5c,
        Some(other) => return Err(err(format!("\"x5c\" is {}, not an array", other.kind()))),
    };
    if x5c.is_empty() {
        return Err(err("\"x5c\" is empty"));
    }
    if x5c.len() > MAX_X5C {
        return Err(err(format!(
            "\"x5c\" holds {} certificates; at most {MAX_X5C} are accepted",
            x5c.len()
        )));
    }
    x5c.iter()
        .enumerate()
        .map(|(i, item)| match item {
            Item::Bytes(der) => Ok(der.clone()),
            other => Err(err(format!(
                "x5c[{i}] is {}, not a byte string",
                other.kind()
            ))),
        })
        .collect()
}
