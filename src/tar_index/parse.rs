//! The incremental tar header parser: fed a tar's bytes in chunks of any size
//! (as the single pass writes them), it reads headers only, counts data bytes
//! without keeping them, and yields each entry with the offset of its data.
//! Format rules and edge cases are specified in `docs/tar-index.md`.

// Wired into the pass and the view next.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The tar block size: headers are one block, data is padded to blocks.
pub(crate) const BLOCK: usize = 512;

/// The largest PAX header or GNU long name/link the parser keeps in memory;
/// a larger one is refused, so a hostile tar cannot make it buffer without
/// bound.
pub(crate) const META_LIMIT: u64 = 1 << 20;

/// The longest entry path (cleaned) or link target kept, in bytes: Linux's
/// `PATH_MAX` less its NUL. Extraction cannot make a longer path, nor
/// `symlink(2)` a longer target; refusing them bounds what one entry costs
/// the index (the directories a path implies cost its depth times its
/// length) and a view's lookup (a target's components).
pub(crate) const PATH_LIMIT: usize = 4095;

/// An entry's type. A hardlink stays a hardlink here; the index builder
/// resolves it to its target's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Hardlink = 4,
    Char = 5,
    Block = 6,
    Fifo = 7,
}

impl Kind {
    /// The kind stored as `byte` in an index record, if it is one.
    pub(crate) fn from_byte(byte: u8) -> Option<Kind> {
        Some(match byte {
            1 => Kind::File,
            2 => Kind::Dir,
            3 => Kind::Symlink,
            4 => Kind::Hardlink,
            5 => Kind::Char,
            6 => Kind::Block,
            7 => Kind::Fifo,
            _ => return None,
        })
    }
}

/// What an entry's name says about the layers below (OCI image-spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Whiteout {
    /// An ordinary entry.
    None = 0,
    /// `.wh.NAME`: NAME, in the same directory, is removed from lower layers.
    Removed = 1,
    /// `.wh..wh..opq`: the directory's lower-layer content is hidden.
    Opaque = 2,
}

impl Whiteout {
    /// The whiteout stored as `byte` in an index record, if it is one.
    pub(crate) fn from_byte(byte: u8) -> Option<Whiteout> {
        Some(match byte {
            0 => Whiteout::None,
            1 => Whiteout::Removed,
            2 => Whiteout::Opaque,
            _ => return None,
        })
    }

    /// The whiteout kind a cleaned path's last component names.
    fn of(path: &[u8]) -> Whiteout {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
        if name == b".wh..wh..opq" {
            Whiteout::Opaque
        } else if name.starts_with(b".wh.") {
            Whiteout::Removed
        } else {
            Whiteout::None
        }
    }
}

/// One tar entry as its headers (ustar, GNU long name/link, PAX) describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TarEntry {
    /// Cleaned lexically: no leading `/`, no `.`, `..` or empty components,
    /// never above the root; `""` is the root. Raw bytes (maybe not UTF-8).
    pub(crate) path: Vec<u8>,
    pub(crate) kind: Kind,
    pub(crate) whiteout: Whiteout,
    /// `mode & 0o7777`.
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime_sec: i64,
    pub(crate) mtime_nsec: u32,
    /// Data bytes of a regular file (for a GNU sparse file, the bytes stored
    /// in the archive); 0 for every other kind.
    pub(crate) size: u64,
    /// Offset in the tar of the entry's first header (its PAX or long-name
    /// header, if it has one).
    pub(crate) header_offset: u64,
    /// Offset in the tar of the entry's data (just after its last header).
    pub(crate) data_offset: u64,
    /// A symlink's target as stored; a hardlink's target path, cleaned like
    /// `path`; empty otherwise.
    pub(crate) link: Vec<u8>,
    pub(crate) dev_major: u32,
    pub(crate) dev_minor: u32,
    /// `SCHILY.xattr.*` records, sorted by name (the prefix removed).
    pub(crate) xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A GNU sparse file (type `S` or `GNU.sparse.*` PAX records): recorded
    /// but not readable through the index.
    pub(crate) sparse: bool,
}

/// Cleans a tar name lexically: `/` separators, `.` and empty components
/// dropped, `..` removes the previous component and never rises above the
/// root, no leading or trailing `/`.
pub(crate) fn clean(path: &[u8]) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    parts.join(&b'/')
}

/// What a buffered metadata entry (a block-padded payload) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meta {
    /// `x`: PAX records for the next entry.
    Pax,
    /// `g`: PAX global records: checked, then ignored.
    PaxGlobal,
    /// `L`: the next entry's name.
    LongName,
    /// `K`: the next entry's link target.
    LongLink,
}

#[derive(Debug)]
enum State {
    /// Expecting a header block.
    Header,
    /// One zero block seen: the next must be zero too (end of archive).
    Zero,
    /// Collecting a metadata payload of `size` bytes.
    Meta {
        meta: Meta,
        buf: Vec<u8>,
        size: usize,
    },
    /// Skipping `remaining` data and padding bytes, the last `padding` of
    /// them padding.
    Skip { remaining: u64, padding: u64 },
    /// Reading old-GNU sparse extension blocks; then `data` (with padding)
    /// follows for the last entry.
    SparseExt { data: u64 },
    /// After the end-of-archive marker: anything more is ignored.
    End,
}

/// Overrides for the next entry, from PAX and GNU long name/link headers.
#[derive(Debug, Default)]
struct Pending {
    /// Where the next entry's first header starts.
    header_offset: Option<u64>,
    /// Bytes of the PAX and long-name payloads read for the next entry:
    /// together at most [`META_LIMIT`], so many headers before one entry
    /// cannot add up without bound either.
    meta_bytes: u64,
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    size: Option<u64>,
    mtime: Option<(i64, u32)>,
    uid: Option<u32>,
    gid: Option<u32>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse: bool,
    sparse_name: Option<Vec<u8>>,
}

/// A push parser: [`feed`](Parser::feed) it the tar in order, then
/// [`finish`](Parser::finish). It never seeks and keeps no file data; its
/// memory is the entries plus at most one [`META_LIMIT`] payload.
#[derive(Debug)]
pub(crate) struct Parser {
    /// Bytes consumed so far: the offset in the tar of the next byte.
    pos: u64,
    block: [u8; BLOCK],
    filled: usize,
    state: State,
    pending: Pending,
    entries: Vec<TarEntry>,
    /// The first error: a failed parser keeps failing with it.
    failed: Option<Error>,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser::new()
    }
}

impl Parser {
    pub(crate) fn new() -> Parser {
        Parser {
            pos: 0,
            block: [0; BLOCK],
            filled: 0,
            state: State::Header,
            pending: Pending::default(),
            entries: Vec::new(),
            failed: None,
        }
    }

    /// The tar bytes consumed so far.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Parses the next `data` bytes of the tar.
    pub(crate) fn feed(&mut self, data: &[u8]) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.feed_inner(data);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    /// Ends the tar: it must stop at a header boundary (after the
    /// end-of-archive marker, or, as Go's archive/tar allows, without one),
    /// or right after an entry's data with its padding missing (as Go's
    /// archive/tar allows too, and as umoci 0.4 writes layers), not inside
    /// a header, a payload or data. Returns the entries in tar order.
    pub(crate) fn finish(self) -> Result<Vec<TarEntry>> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let at_boundary = match self.state {
            State::Header | State::Zero | State::End => true,
            State::Skip { remaining, padding } => remaining <= padding,
            State::Meta { .. } | State::SparseExt { .. } => false,
        };
        let clean_end = self.filled == 0 && self.pending.header_offset.is_none() && at_boundary;
        if !clean_end {
            return Err(Error::invalid_content(format!(
                "tar is truncated: it ends at byte {} inside an entry",
                self.pos
            )));
        }
        Ok(self.entries)
    }

    fn feed_inner(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            match &mut self.state {
                State::End => {
                    self.pos += data.len() as u64;
                    return Ok(());
                }
                State::Skip { remaining, .. } => {
                    let n = (*remaining).min(data.len() as u64) as usize;
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        self.state = State::Header;
                    }
                    self.pos += n as u64;
                    data = &data[n..];
                }
                State::Meta { buf, size, .. } => {
                    let n = (*size - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..n]);
                    self.pos += n as u64;
                    data = &data[n..];
                    if buf.len() == *size {
                        self.meta_done()?;
                    }
                }
                State::Header | State::Zero | State::SparseExt { .. } => {
                    let n = (BLOCK - self.filled).min(data.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
                    self.filled += n;
                    self.pos += n as u64;
                    data = &data[n..];
                    if self.filled == BLOCK {
                        self.filled = 0;
                        self.on_block()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The offset of the block just read.
    fn block_offset(&self) -> u64 {
        self.pos - BLOCK as u64
    }

    fn on_block(&mut self) -> Result<()> {
        let zero = self.block.iter().all(|&b| b == 0);
        match self.state {
            State::SparseExt { data } => {
                // Old GNU sparse: byte 504 says another extension block follows.
                if self.block[504] == 0 {
                    if let Some(last) = self.entries.last_mut() {
                        last.data_offset = self.pos;
                    }
                    self.skip(data);
                }
                Ok(())
            }
            State::Zero if zero => {
                self.state = State::End;
                Ok(())
            }
            State::Zero => Err(Error::invalid_content(format!(
                "tar has a lone zero block before the header at byte {}",
                self.block_offset()
            ))),
            State::Header if zero => {
                if self.pending.header_offset.is_some() {
                    return Err(Error::invalid_content(format!(
                        "tar ends at byte {} after an extended header with no entry",
                        self.block_offset()
                    )));
                }
                self.state = State::Zero;
                Ok(())
            }
            _ => self.header(),
        }
    }

    /// Skips `data` bytes and their padding to the next block.
    fn skip(&mut self, data: u64) {
        let remaining = padded(data);
        self.state = if remaining == 0 {
            State::Header
        } else {
            State::Skip {
                remaining,
                padding: remaining - data,
            }
        };
    }

    fn header(&mut self) -> Result<()> {
        let offset = self.block_offset();
        let block = self.block;
        verify_checksum(&block, offset)?;
        let typeflag = block[156];
        let size_field = numeric(&block[124..136], "size", offset)?;
        let mut size = u64::try_from(size_field).map_err(|_| {
            Error::invalid_content(format!("tar header at byte {offset} has a negative size"))
        })?;
        // Every entry must end inside a u64 offset, padding included.
        let pos = self.pos;
        let check_end = |size: u64| {
            pos.checked_add(size)
                .and_then(|end| end.checked_add(BLOCK as u64))
                .ok_or_else(|| {
                    Error::invalid_content(format!(
                        "tar entry at byte {offset} has a size ({size}) that overflows"
                    ))
                })
        };
        check_end(size)?;
        let meta = match typeflag {
            b'x' => Some(Meta::Pax),
            b'g' => Some(Meta::PaxGlobal),
            b'L' => Some(Meta::LongName),
            b'K' => Some(Meta::LongLink),
            _ => None,
        };
        if let Some(meta) = meta {
            if size > META_LIMIT {
                return Err(Error::invalid_content(format!(
                    "tar header at byte {offset} has a {size}-byte extended header \
                     (at most {META_LIMIT} are read)"
                )));
            }
            if meta != Meta::PaxGlobal {
                // A global header is not part of the next entry.
                self.pending.header_offset.get_or_insert(offset);
                self.pending.meta_bytes += size;
                if self.pending.meta_bytes > META_LIMIT {
                    return Err(Error::invalid_content(format!(
                        "tar header at byte {offset}: the extended headers of one entry \
                         add up to more than {META_LIMIT} bytes"
                    )));
                }
            }
            self.state = State::Meta {
                meta,
                buf: Vec::with_capacity(size as usize),
                size: size as usize,
            };
            if size == 0 {
                self.meta_done()?;
            }
            return Ok(());
        }
        match typeflag {
            b'V' => {
                // A GNU volume label: no entry.
                self.pending = Pending::default();
                self.skip(size);
                return Ok(());
            }
            b'M' => {
                return Err(Error::unsupported(format!(
                    "tar header at byte {offset} continues a multi-volume archive"
                )))
            }
            _ => {}
        }
        let pending = std::mem::take(&mut self.pending);
        let magic = &block[257..265];
        let ustar = &magic[..6] == b"ustar\0";
        let gnu = magic == b"ustar  \0";
        let mut name = field(&block[0..100]).to_vec();
        if ustar {
            let prefix = field(&block[345..500]);
            if !prefix.is_empty() {
                name = [prefix, b"/", &name].concat();
            }
        }
        let raw_name = pending
            .sparse_name
            .or(pending.path)
            .or(pending.long_name)
            .unwrap_or(name);
        let raw_link = pending
            .linkpath
            .or(pending.long_link)
            .unwrap_or_else(|| field(&block[157..257]).to_vec());
        for (what, value) in [("name", &raw_name), ("link target", &raw_link)] {
            if value.contains(&0) {
                return Err(Error::invalid_content(format!(
                    "tar entry at byte {offset} has a NUL byte in its {what}"
                )));
            }
        }
        let dir_name = raw_name.ends_with(b"/");
        let sparse = typeflag == b'S' || pending.sparse;
        let kind = match typeflag {
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' | b'D' => Kind::Dir,
            b'6' => Kind::Fifo,
            // An old (pre-POSIX) directory: type NUL with a trailing '/' (as
            // Go's archive/tar reads it; type '0' stays a file).
            0 if dir_name => Kind::Dir,
            // '0', '\0', '7' (contiguous), 'S' (sparse), and, as POSIX says,
            // any unknown type: a regular file.
            _ => Kind::File,
        };
        if let Some(pax_size) = pending.size {
            size = pax_size;
            check_end(size)?;
        }
        // Header-only types carry no data whatever their size field says
        // (as Go's archive/tar reads them); a GNU dumpdir ('D') has data.
        let data = match kind {
            Kind::File => size,
            Kind::Dir if typeflag == b'D' => size,
            _ => 0,
        };
        let path = clean(&raw_name);
        let linked = matches!(kind, Kind::Hardlink | Kind::Symlink);
        for (what, len) in [("path", path.len()), ("link target", raw_link.len())] {
            if len > PATH_LIMIT && (what == "path" || linked) {
                return Err(Error::invalid_content(format!(
                    "tar entry at byte {offset} has a {len}-byte {what} \
                     (at most {PATH_LIMIT}, as Linux allows)"
                )));
            }
        }
        if path.is_empty() && kind != Kind::Dir {
            return Err(Error::invalid_content(format!(
                "tar entry at byte {offset} names the root but is not a directory"
            )));
        }
        let (mtime_sec, mtime_nsec) = match pending.mtime {
            Some(m) => m,
            None => (numeric(&block[136..148], "mtime", offset)?, 0),
        };
        let id = |value: Option<u32>, range: std::ops::Range<usize>, what: &str| match value {
            Some(v) => Ok(v),
            None => small(numeric(&block[range], what, offset)?, what, offset),
        };
        let (dev_major, dev_minor) = if (ustar || gnu) && matches!(kind, Kind::Char | Kind::Block) {
            (
                small(
                    numeric(&block[329..337], "devmajor", offset)?,
                    "devmajor",
                    offset,
                )?,
                small(
                    numeric(&block[337..345], "devminor", offset)?,
                    "devminor",
                    offset,
                )?,
            )
        } else {
            (0, 0)
        };
        let entry = TarEntry {
            whiteout: Whiteout::of(&path),
            link: match kind {
                Kind::Hardlink => clean(&raw_link),
                Kind::Symlink => raw_link,
                _ => Vec::new(),
            },
            path,
            kind,
            mode: small(numeric(&block[100..108], "mode", offset)?, "mode", offset)? & 0o7777,
            uid: id(pending.uid, 108..116, "uid")?,
            gid: id(pending.gid, 116..124, "gid")?,
            mtime_sec,
            mtime_nsec,
            size: if kind == Kind::File { size } else { 0 },
            header_offset: pending.header_offset.unwrap_or(offset),
            data_offset: self.pos,
            dev_major,
            dev_minor,
            xattrs: pending.xattrs.into_iter().collect(),
            sparse,
        };
        self.entries.push(entry);
        if typeflag == b'S' && block[482] != 0 {
            self.state = State::SparseExt { data };
        } else {
            self.skip(data);
        }
        Ok(())
    }

    /// A metadata payload is complete: apply it, then skip its padding.
    fn meta_done(&mut self) -> Result<()> {
        let State::Meta { meta, buf, size } = std::mem::replace(&mut self.state, State::Header)
        else {
            unreachable!("meta_done outside State::Meta");
        };
        let offset = self.pos - size as u64;
        match meta {
            Meta::LongName => self.pending.long_name = Some(field(&buf).to_vec()),
            Meta::LongLink => self.pending.long_link = Some(field(&buf).to_vec()),
            Meta::PaxGlobal => pax_records(&buf, offset, |_, _| Ok(()))?,
            Meta::Pax => {
                let pending = &mut self.pending;
                pax_records(&buf, offset, |key, value| {
                    apply_pax(pending, key, value, offset)
                })?;
            }
        }
        // The payload is consumed; only its padding is left.
        let padding = padded(size as u64) - size as u64;
        self.state = if padding == 0 {
            State::Header
        } else {
            State::Skip {
                remaining: padding,
                padding,
            }
        };
        Ok(())
    }
}

/// Applies one PAX record to the next entry. An empty value removes an
/// earlier override (POSIX); unknown keys are ignored.
fn apply_pax(pending: &mut Pending, key: &[u8], value: &[u8], offset: u64) -> Result<()> {
    let bad = |what: &str| {
        Error::invalid_content(format!(
            "tar PAX header at byte {offset} has a malformed {what}: {:?}",
            String::from_utf8_lossy(value)
        ))
    };
    let set = value.is_empty();
    let text = std::str::from_utf8(value).ok();
    let integer = |what: &str| -> Result<u64> {
        text.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad(what))
    };
    let id = |what: &str| -> Result<u32> {
        let v = integer(what)?;
        u32::try_from(v).map_err(|_| bad(what))
    };
    if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
        pending.xattrs.insert(name.to_vec(), value.to_vec());
        return Ok(());
    }
    if key.starts_with(b"GNU.sparse.") {
        pending.sparse = true;
        if key == b"GNU.sparse.name" {
            pending.sparse_name = (!set).then(|| value.to_vec());
        }
        return Ok(());
    }
    match key {
        b"path" => pending.path = (!set).then(|| value.to_vec()),
        b"linkpath" => pending.linkpath = (!set).then(|| value.to_vec()),
        b"size" => pending.size = if set { None } else { Some(integer("size")?) },
        b"uid" => pending.uid = if set { None } else { Some(id("uid")?) },
        b"gid" => pending.gid = if set { None } else { Some(id("gid")?) },
        b"mtime" => {
            pending.mtime = if set {
                None
            } else {
                Some(pax_time(text.ok_or_else(|| bad("mtime"))?).ok_or_else(|| bad("mtime"))?)
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses a PAX time, `[-]SECONDS[.FRACTION]`, into seconds and
/// nanoseconds (in 0..1e9, so -1.5 is (-2, 500000000)); digits past
/// nanoseconds are dropped.
fn pax_time(text: &str) -> Option<(i64, u32)> {
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if secs.is_empty() || !digits(secs) || !digits(frac) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nsec: u32 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nsec = nsec * 10 + digit;
    }
    if !negative {
        Some((secs, nsec))
    } else if nsec == 0 {
        Some((secs.checked_neg()?, 0))
    } else {
        Some((secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nsec))
    }
}

/// Calls `on(key, value)` for each `LENGTH KEY=VALUE\n` record of a PAX
/// payload; anything malformed is an error.
fn pax_records(
    mut data: &[u8],
    offset: u64,
    mut on: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let bad = || Error::invalid_content(format!("tar PAX header at byte {offset} is malformed"));
    while !data.is_empty() {
        let space = data
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or_else(bad)?;
        let digits = &data[..space];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        if eq == 0 {
            return Err(bad());
        }
        on(&record[..eq], &record[eq + 1..])?;
        data = &data[len..];
    }
    Ok(())
}

/// `data` rounded up to whole blocks.
fn padded(data: u64) -> u64 {
    data.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// A NUL-terminated header field's bytes.
fn field(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

/// A numeric header field: octal (spaces and NULs around it allowed), or
/// GNU base-256 (first byte 0x80 positive, 0xff negative). A value outside
/// i64 is an error.
fn numeric(bytes: &[u8], what: &str, offset: u64) -> Result<i64> {
    let bad = || {
        Error::invalid_content(format!(
            "tar header at byte {offset} has a malformed or overflowing {what} field"
        ))
    };
    match bytes.first() {
        Some(0x80) | Some(0xff) => {
            // Big-endian two's complement over the whole field (at most 12
            // bytes, so it fits an i128), the marker bit removed when positive.
            let negative = bytes[0] == 0xff;
            let mut value: i128 = 0;
            for (i, &b) in bytes.iter().enumerate() {
                let b = if i == 0 && !negative { b & 0x7f } else { b };
                value = value.checked_mul(256).ok_or_else(bad)? + i128::from(b);
            }
            if negative {
                let bits = 8 * u32::try_from(bytes.len()).map_err(|_| bad())?;
                value -= 1i128.checked_shl(bits).ok_or_else(bad)?;
            }
            i64::try_from(value).map_err(|_| bad())
        }
        _ => {
            let trimmed: &[u8] = {
                let is_pad = |b: &u8| *b == b' ' || *b == 0;
                let start = bytes.iter().position(|b| !is_pad(b)).unwrap_or(bytes.len());
                let end = bytes
                    .iter()
                    .rposition(|b| !is_pad(b))
                    .map_or(start, |e| e + 1);
                &bytes[start..end]
            };
            let mut value: i64 = 0;
            for &b in trimmed {
                if !(b'0'..=b'7').contains(&b) {
                    return Err(bad());
                }
                value = value
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(i64::from(b - b'0')))
                    .ok_or_else(bad)?;
            }
            Ok(value)
        }
    }
}

/// A numeric field that must fit a u32 (mode, ids, device numbers).
fn small(value: i64, what: &str, offset: u64) -> Result<u32> {
    u32::try_from(value).map_err(|_| {
        Error::invalid_content(format!(
            "tar header at byte {offset} has a {what} ({value}) outside 0..=4294967295"
        ))
    })
}

/// The sum of `bytes` (a multiple of 8 long), eight at a time: each u64
/// word's bytes are added pairwise into four 16-bit lanes, which cannot
/// overflow for 64 words (64 * 2 * 255 < 65536), then the lanes are added.
/// Every header is summed, so this matters for archives of many small files.
fn byte_sum(bytes: &[u8]) -> i64 {
    const LOW: u64 = 0x00ff_00ff_00ff_00ff;
    let mut total = 0;
    for words in bytes.chunks(64 * 8) {
        let mut lanes = 0u64;
        for word in words.chunks_exact(8) {
            let x = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            lanes += (x & LOW) + ((x >> 8) & LOW);
        }
        total += (0..4).map(|i| (lanes >> (16 * i)) & 0xffff).sum::<u64>();
    }
    total as i64
}

/// Checks a header's checksum: the sum of its bytes with the checksum field
/// read as spaces, unsigned (POSIX) or signed (some historic writers).
fn verify_checksum(block: &[u8; BLOCK], offset: u64) -> Result<()> {
    let stored = numeric(&block[148..156], "checksum", offset)?;
    // The field itself counts as eight spaces.
    let unsigned = byte_sum(block) - byte_sum(&block[148..156]) + 8 * 32;
    // Signed sums are only tried when the POSIX one does not match.
    let signed = || {
        let sum = |b: &[u8]| b.iter().map(|&b| i64::from(b as i8)).sum::<i64>();
        sum(block) - sum(&block[148..156]) + 8 * 32
    };
    if stored == unsigned || stored == signed() {
        Ok(())
    } else {
        Err(Error::invalid_content(format!(
            "tar header at byte {offset} has a bad checksum ({stored}, computed {unsigned})"
        )))
    }
}

/// Hand-made tar pieces for tests, including what GNU tar will not write
/// (`..` and absolute names, bad checksums, overflowing sizes).
#[cfg(test)]
pub(crate) mod testing {
    use super::BLOCK;

    /// Writes `value` as a NUL-terminated octal field filling `field`.
    fn octal(field: &mut [u8], value: u64) {
        let text = format!("{value:0width$o}\0", width = field.len() - 1);
        field.copy_from_slice(text.as_bytes());
    }

    /// Sets a header's checksum field.
    pub(crate) fn seal(block: &mut [u8; BLOCK]) {
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    /// A ustar header (name and link at most 100 bytes), mode 0644,
    /// uid 1000, gid 1001, mtime 1700000000.
    pub(crate) fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8]) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name);
        octal(&mut b[100..108], 0o644);
        octal(&mut b[108..116], 1000);
        octal(&mut b[116..124], 1001);
        octal(&mut b[124..136], size);
        octal(&mut b[136..148], 1_700_000_000);
        b[156] = typeflag;
        b[157..157 + link.len()].copy_from_slice(link);
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        seal(&mut b);
        b
    }

    /// `data` padded to whole blocks.
    pub(crate) fn pad(data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        out.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    /// A header of `typeflag` and its data, padded.
    pub(crate) fn entry(name: &[u8], typeflag: u8, data: &[u8], link: &[u8]) -> Vec<u8> {
        let mut out = header(name, typeflag, data.len() as u64, link).to_vec();
        out.extend(pad(data));
        out
    }

    /// A regular file with `data`.
    pub(crate) fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
        entry(name, b'0', data, b"")
    }

    /// One PAX record, its length prefix counting itself.
    pub(crate) fn record(key: &[u8], value: &[u8]) -> Vec<u8> {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        [len.to_string().as_bytes(), b" ", key, b"=", value, b"\n"].concat()
    }

    /// A PAX header (`x`, or `g` for global) with `records`.
    pub(crate) fn pax(typeflag: u8, records: &[(&[u8], &[u8])]) -> Vec<u8> {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| record(k, v)).collect();
        entry(b"PaxHeaders/x", typeflag, &data, b"")
    }

    /// The end-of-archive marker.
    pub(crate) fn end() -> Vec<u8> {
        vec![0; 2 * BLOCK]
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use crate::ErrorKind;

    fn parse(tar: &[u8]) -> Result<Vec<TarEntry>> {
        let mut parser = Parser::new();
        parser.feed(tar)?;
        parser.finish()
    }

    fn parse_err(tar: &[u8]) -> Error {
        parse(tar).expect_err("the tar must be refused")
    }

    fn paths(entries: &[TarEntry]) -> Vec<&[u8]> {
        entries.iter().map(|e| e.path.as_slice()).collect()
    }

    #[test]
    fn numeric_fields_octal_and_base256() {
        assert_eq!(numeric(b"0000644\0", "f", 0).unwrap(), 0o644);
        assert_eq!(numeric(b"  17 \0\0\0", "f", 0).unwrap(), 0o17);
        assert_eq!(numeric(b"\0\0\0\0\0\0\0\0", "f", 0).unwrap(), 0);
        let mut positive = [0u8; 12];
        positive[0] = 0x80;
        positive[10] = 1;
        assert_eq!(numeric(&positive, "f", 0).unwrap(), 256);
        assert_eq!(numeric(&[0xff; 12], "f", 0).unwrap(), -1);
        let mut minus_256 = [0xff; 12];
        minus_256[11] = 0;
        assert_eq!(numeric(&minus_256, "f", 0).unwrap(), -256);
        let mut huge = [0xff; 12];
        huge[0] = 0x80;
        for bad in [&huge[..], b"0000648\0", b"77777777777777777777777"] {
            let e = numeric(bad, "size", 7).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidContent);
            assert!(e.message().contains("byte 7"), "{e}");
        }
    }

    #[test]
    fn byte_sums_match_the_plain_sum() {
        let mut block = [0u8; BLOCK];
        for fill in [0u8, 1, 0x80, 0xff] {
            block.fill(fill);
            let plain: i64 = block.iter().map(|&b| i64::from(b)).sum();
            assert_eq!(byte_sum(&block), plain);
        }
        for (i, b) in block.iter_mut().enumerate() {
            *b = (i * 37 % 256) as u8;
        }
        let plain: i64 = block.iter().map(|&b| i64::from(b)).sum();
        assert_eq!(byte_sum(&block), plain);
        assert_eq!(
            byte_sum(&block[148..156]),
            block[148..156].iter().map(|&b| i64::from(b)).sum::<i64>()
        );
    }

    #[test]
    fn pax_times_keep_nanoseconds() {
        assert_eq!(pax_time("1.5"), Some((1, 500_000_000)));
        assert_eq!(pax_time("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(pax_time("-2"), Some((-2, 0)));
        assert_eq!(pax_time("12.1234567899"), Some((12, 123_456_789)));
        assert_eq!(pax_time("12."), Some((12, 0)));
        for bad in ["", "x", "1.x", "-", ".5", "1e3", "99999999999999999999"] {
            assert_eq!(pax_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn clean_never_rises_above_the_root() {
        for (raw, cleaned) in [
            (&b"./etc/passwd"[..], &b"etc/passwd"[..]),
            (b"/etc//passwd/", b"etc/passwd"),
            (b"../../etc/passwd", b"etc/passwd"),
            (b"a/../../b/./c/..", b"b"),
            (b"./", b""),
            (b"/", b""),
            (b"..", b""),
        ] {
            assert_eq!(clean(raw), cleaned, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn every_kind_with_its_offsets() {
        let tar = [
            entry(b"./", b'5', b"", b""),
            file(b"./a.txt", b"hello"),
            entry(b"d/", b'5', b"", b""),
            entry(b"d/sym", b'2', b"", b"../a.txt"),
            entry(b"d/hard", b'1', b"", b"./a.txt"),
            entry(b"dev/null", b'3', b"", b""),
            entry(b"dev/sda", b'4', b"", b""),
            entry(b"fifo", b'6', b"", b""),
            entry(b"contiguous", b'7', b"xy", b""),
            entry(b"unknown", b'Z', b"z", b""),
            entry(b"olddir/", 0, b"", b""),
            end(),
        ]
        .concat();
        let entries = parse(&tar).unwrap();
        let kinds: Vec<Kind> = entries.iter().map(|e| e.kind).collect();
        use Kind::*;
        assert_eq!(
            kinds,
            [Dir, File, Dir, Symlink, Hardlink, Char, Block, Fifo, File, File, Dir]
        );
        let a = &entries[1];
        assert_eq!(a.path, b"a.txt");
        assert_eq!((a.header_offset, a.data_offset, a.size), (512, 1024, 5));
        assert_eq!(&tar[1024..1029], b"hello");
        assert_eq!((a.mode, a.uid, a.gid), (0o644, 1000, 1001));
        assert_eq!((a.mtime_sec, a.mtime_nsec), (1_700_000_000, 0));
        assert_eq!(
            entries[3].link, b"../a.txt",
            "a symlink target is kept as stored"
        );
        assert_eq!(entries[4].link, b"a.txt", "a hardlink target is cleaned");
        assert_eq!(entries[8].data_offset, entries[8].header_offset + 512);
        assert_eq!(entries.iter().map(|e| e.size).sum::<u64>(), 5 + 2 + 1);
    }

    #[test]
    fn device_numbers_are_read() {
        let mut dev = header(b"dev/tty", b'3', 0, b"");
        dev[329..337].copy_from_slice(b"0000005\0");
        dev[337..345].copy_from_slice(b"0000001\0");
        seal(&mut dev);
        let entries = parse(&[&dev[..], &end()].concat()).unwrap();
        assert_eq!((entries[0].dev_major, entries[0].dev_minor), (5, 1));
    }

    #[test]
    fn header_only_types_skip_no_data_whatever_their_size() {
        // A symlink claiming 600 bytes: none follow it (as Go's archive/tar).
        let tar = [
            header(b"s", b'2', 600, b"t").to_vec(),
            file(b"f", b"x"),
            end(),
        ]
        .concat();
        let entries = parse(&tar).unwrap();
        assert_eq!(paths(&entries), [&b"s"[..], b"f"]);
        assert_eq!(entries[0].size, 0);
    }

    #[test]
    fn traversal_and_absolute_names_are_cleaned() {
        let tar = [
            file(b"../../etc/passwd", b"x"),
            file(b"/abs/file", b"y"),
            file(b"a/../../../b", b"z"),
            entry(b"../", b'5', b"", b""),
            end(),
        ]
        .concat();
        let entries = parse(&tar).unwrap();
        assert_eq!(
            paths(&entries),
            [&b"etc/passwd"[..], b"abs/file", b"b", b""]
        );
        let e = parse_err(&[file(b"..", b"x"), end()].concat());
        assert!(e.message().contains("names the root"), "{e}");
    }

    #[test]
    fn paths_and_link_targets_longer_than_path_max_are_refused() {
        let at_limit = "a/".repeat(PATH_LIMIT / 2) + "b";
        let over = at_limit.clone() + "c";
        let with_path = |path: &str, typeflag: u8, link: &[u8]| {
            let mut tar = pax(b'x', &[(b"path", path.as_bytes()), (b"linkpath", link)]);
            tar.extend(entry(b"placeholder", typeflag, b"", b""));
            tar.extend(end());
            tar
        };
        let entries = parse(&with_path(&at_limit, b'2', at_limit.as_bytes())).unwrap();
        assert_eq!(entries[0].path.len(), PATH_LIMIT);
        assert_eq!(entries[0].link.len(), PATH_LIMIT);
        // `./` and `..` are cleaned away before the path is measured.
        let dotted = format!("./x/../{at_limit}");
        assert_eq!(
            parse(&with_path(&dotted, b'0', b"")).unwrap()[0].path.len(),
            PATH_LIMIT
        );
        // The entry's header is the block before the end marker.
        let header_at = |tar: &[u8]| tar.len() - 3 * BLOCK;
        let tar = with_path(&over, b'0', b"");
        let e = parse_err(&tar);
        assert_eq!(e.kind(), ErrorKind::InvalidContent);
        assert_eq!(
            e.message(),
            format!(
                "tar entry at byte {} has a 4096-byte path (at most 4095, as Linux allows)",
                header_at(&tar)
            )
        );
        for typeflag in [b'1', b'2'] {
            let tar = with_path("l", typeflag, over.as_bytes());
            assert_eq!(
                parse_err(&tar).message(),
                format!(
                    "tar entry at byte {} has a 4096-byte link target \
                     (at most 4095, as Linux allows)",
                    header_at(&tar)
                )
            );
        }
        // A link target on any other kind of entry is not one.
        assert!(parse(&with_path("f", b'0', over.as_bytes())).is_ok());
    }

    #[test]
    fn ustar_prefix_and_gnu_long_names() {
        let long = "d/".repeat(80) + "file";
        let mut prefixed = header(b"name", b'0', 0, b"");
        prefixed[345..351].copy_from_slice(b"prefix");
        seal(&mut prefixed);
        let long_link = "t/".repeat(100);
        let tar = [
            prefixed.to_vec(),
            entry(b"././@LongLink", b'L', format!("{long}\0").as_bytes(), b""),
            file(b"truncated-name", b"data"),
            entry(b"././@LongLink", b'K', long_link.as_bytes(), b""),
            entry(b"sym", b'2', b"", b"short"),
            end(),
        ]
        .concat();
        let entries = parse(&tar).unwrap();
        assert_eq!(entries[0].path, b"prefix/name");
        assert_eq!(entries[1].path, long.as_bytes());
        assert_eq!(entries[1].header_offset, 512, "from the long-name header");
        assert_eq!(entries[1].size, 4);
        assert_eq!(entries[2].link, long_link.as_bytes());
        assert_eq!(entries[2].path, b"sym");
    }

    #[test]
    fn pax_records_override_the_header() {
        let long = "p/".repeat(200) + "f";
        let tar = [
            pax(b'g', &[(b"path", b"global-is-ignored"), (b"comment", b"x")]),
            pax(
                b'x',
                &[
                    (b"path", long.as_bytes()),
                    (b"size", b"3"),
                    (b"mtime", b"1700000000.25"),
                    (b"uid", b"4000000000"),
                    (b"gid", b"7"),
                    (b"uname", b"ignored"),
                    (b"SCHILY.xattr.user.b", b"2\n\0bin"),
                    (b"SCHILY.xattr.user.a", b"1"),
                ],
            ),
            header(b"short", b'0', 999, b"").to_vec(),
            pad(b"abc"),
            pax(b'x', &[(b"linkpath", b"/far/away"), (b"path", b"")]),
            entry(b"link", b'2', b"", b"near"),
            file(b"plain", b""),
            end(),
        ]
        .concat();
        let entries = parse(&tar).unwrap();
        let e = &entries[0];
        assert_eq!(e.path, long.as_bytes());
        assert_eq!(
            (e.size, e.mtime_sec, e.mtime_nsec),
            (3, 1_700_000_000, 250_000_000)
        );
        assert_eq!((e.uid, e.gid), (4_000_000_000, 7));
        assert_eq!(
            e.xattrs,
            [
                (b"user.a".to_vec(), b"1".to_vec()),
                (b"user.b".to_vec(), b"2\n\0bin".to_vec())
            ]
        );
        assert_eq!(e.header_offset, 1024, "after the global header");
        assert_eq!(&tar[e.data_offset as usize..][..3], b"abc");
        assert_eq!(
            (entries[1].path.as_slice(), entries[1].link.as_slice()),
            (&b"link"[..], &b"/far/away"[..])
        );
        assert_eq!(entries[2].xattrs, [], "PAX records apply to one entry");
        assert_eq!(entries[2].uid, 1000);
    }

    #[test]
    fn malformed_pax_is_refused() {
        for records in [
            &b"5 a=b\n"[..],
            b"6 ab\n\n",
            b"x a=b\n",
            b"7 a=b\n",
            b"6 a=b\nzz",
            b"6 =bb\n",
        ] {
            let tar = [entry(b"h", b'x', records, b""), file(b"f", b""), end()].concat();
            let e = parse_err(&tar);
            assert_eq!(e.kind(), ErrorKind::InvalidContent, "{records:?}");
        }
        for (key, value) in [
            (&b"size"[..], &b"-1"[..]),
            (b"size", b"99999999999999999999"),
            (b"uid", b"4294967296"),
            (b"mtime", b"soon"),
            (b"path", b"a\0b"),
        ] {
            let tar = [pax(b'x', &[(key, value)]), file(b"f", b""), end()].concat();
            assert_eq!(parse_err(&tar).kind(), ErrorKind::InvalidContent, "{key:?}");
        }
    }

    #[test]
    fn whiteouts_are_classified() {
        let tar = [
            file(b"a/.wh.gone", b""),
            file(b"a/.wh..wh..opq", b""),
            file(b"a/.whnot", b""),
            end(),
        ]
        .concat();
        let w: Vec<Whiteout> = parse(&tar).unwrap().iter().map(|e| e.whiteout).collect();
        assert_eq!(w, [Whiteout::Removed, Whiteout::Opaque, Whiteout::None]);
    }

    #[test]
    fn bad_checksum_is_refused_and_the_parser_stays_failed() {
        let mut bad = header(b"f", b'0', 0, b"");
        bad[0] = b'g';
        let mut parser = Parser::new();
        let e = parser.feed(&bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidContent);
        assert!(e.message().contains("bad checksum"), "{e}");
        assert_eq!(parser.feed(&end()).unwrap_err().message(), e.message());
        assert_eq!(parser.finish().unwrap_err().message(), e.message());
    }

    #[test]
    fn overflowing_and_negative_sizes_are_refused() {
        let mut huge = header(b"f", b'0', 0, b"");
        huge[124] = 0x80;
        huge[125..136].fill(0xff);
        seal(&mut huge);
        let e = parse_err(&huge);
        assert!(e.message().contains("overflow"), "{e}");
        let mut near_max = header(b"f", b'0', 0, b"");
        near_max[124..136].copy_from_slice(&[
            0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf0,
        ]);
        seal(&mut near_max);
        // It fits a u64 offset, so it is only longer than the tar.
        let e = parse_err(&near_max);
        assert!(e.message().contains("truncated"), "{e}");
        let mut negative = header(b"f", b'0', 0, b"");
        negative[124..136].fill(0xff);
        seal(&mut negative);
        assert!(parse_err(&negative).message().contains("negative size"));
        let e = parse_err(
            &[
                pax(b'x', &[(b"size", b"18446744073709551615")]),
                file(b"f", b""),
            ]
            .concat(),
        );
        assert!(e.message().contains("overflows"), "{e}");
    }

    #[test]
    fn huge_extended_headers_are_refused_before_reading_them() {
        for typeflag in [b'x', b'g', b'L', b'K'] {
            let e = parse_err(&header(b"h", typeflag, META_LIMIT + 1, b""));
            assert_eq!(e.kind(), ErrorKind::InvalidContent);
            assert!(e.message().contains("extended header"), "{e}");
        }
        // At the limit it is read.
        let data = record(b"comment", &vec![b'x'; META_LIMIT as usize - 17]);
        assert_eq!(data.len() as u64, META_LIMIT);
        let tar = [entry(b"h", b'x', &data, b""), file(b"f", b""), end()].concat();
        assert_eq!(parse(&tar).unwrap().len(), 1);
        // Many smaller ones before one entry add up to the same limit.
        let quarter = record(b"SCHILY.xattr.user.a", &vec![b'x'; META_LIMIT as usize / 4]);
        let mut tar = Vec::new();
        for _ in 0..4 {
            tar.extend(entry(b"h", b'x', &quarter, b""));
        }
        let e = parse_err(&tar);
        assert!(e.message().contains("add up to more than"), "{e}");
        // The limit is per entry.
        let mut tar = Vec::new();
        for _ in 0..8 {
            tar.extend(entry(b"h", b'x', &quarter, b""));
            tar.extend(file(b"f", b""));
        }
        tar.extend(end());
        assert_eq!(parse(&tar).unwrap().len(), 8);
    }

    #[test]
    fn truncated_archives_are_refused() {
        let tar = [file(b"f", b"hello"), end()].concat();
        // In the header, in the data (ending in the padding is accepted).
        for cut in [1, 300, 513, 516] {
            let e = parse_err(&tar[..cut]);
            assert!(e.message().contains("truncated"), "{cut}: {e}");
        }
        let pax_then_end = [pax(b'x', &[(b"path", b"p")]), end()].concat();
        assert!(parse_err(&pax_then_end).message().contains("no entry"));
        let pax_then_nothing = pax(b'x', &[(b"path", b"p")]);
        assert!(parse_err(&pax_then_nothing).message().contains("truncated"));
        // A lone zero block followed by a header.
        let lone = [file(b"f", b""), vec![0; 512], file(b"g", b"")].concat();
        assert!(parse_err(&lone).message().contains("lone zero block"));
    }

    #[test]
    fn a_tar_may_end_right_after_its_last_data_without_padding() {
        // umoci 0.4.7 writes layers this way; Go's archive/tar reads them.
        let tar = [file(b"a", b"first"), file(b"f", b"hello")].concat();
        let unpadded = &tar[..tar.len() - (512 - 5)];
        let entries = parse(unpadded).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].size, 5);
        // Or inside the padding.
        assert_eq!(parse(&tar[..tar.len() - 9]).unwrap().len(), 2);
        // One byte of data short is still truncated.
        let e = parse_err(&unpadded[..unpadded.len() - 1]);
        assert!(e.message().contains("truncated"), "{e}");
        // So is an unpadded PAX payload with no entry after it.
        let pax = pax(b'x', &[(b"path", b"p")]);
        let payload = 512 + b"10 path=p\n".len();
        let e = parse_err(&pax[..payload]);
        assert!(e.message().contains("truncated"), "{e}");
    }

    #[test]
    fn end_marker_is_optional_and_what_follows_it_ignored() {
        let without = file(b"f", b"x");
        assert_eq!(parse(&without).unwrap().len(), 1);
        let with_junk = [file(b"f", b"x"), end(), vec![7; 9000]].concat();
        let mut parser = Parser::new();
        parser.feed(&with_junk).unwrap();
        assert_eq!(parser.position(), with_junk.len() as u64);
        assert_eq!(parser.finish().unwrap().len(), 1);
    }

    #[test]
    fn volume_labels_are_skipped_and_multivolume_refused() {
        let tar = [entry(b"label", b'V', b"", b""), file(b"f", b""), end()].concat();
        assert_eq!(paths(&parse(&tar).unwrap()), [&b"f"[..]]);
        let e = parse_err(&header(b"m", b'M', 0, b""));
        assert_eq!(e.kind(), ErrorKind::Unsupported);
    }

    #[test]
    fn chunked_feeding_gives_the_same_entries() {
        let tar = [
            pax(
                b'x',
                &[
                    (b"path", "x/".repeat(300).as_bytes()),
                    (b"SCHILY.xattr.user.k", b"v"),
                ],
            ),
            file(b"ignored", &[1; 700]),
            entry(b"././@LongLink", b'L', "y".repeat(150).as_bytes(), b""),
            entry(b"s", b'2', b"", b"target"),
            file(b"small", b"abc"),
            end(),
        ]
        .concat();
        let whole = parse(&tar).unwrap();
        for size in [1, 7, 511, 512, 513, 4096] {
            let mut parser = Parser::new();
            for chunk in tar.chunks(size) {
                parser.feed(chunk).unwrap();
            }
            assert_eq!(parser.finish().unwrap(), whole, "chunks of {size}");
        }
    }
}
