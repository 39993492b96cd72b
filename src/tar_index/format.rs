//! The index file: built from a tar's parsed entries (duplicates replaced,
//! hardlinks resolved, implicit directories added, records sorted by
//! (parent, name)), serialized, and read back with every offset checked so a
//! lookup is a binary search over the bytes. The layout is specified in
//! `docs/tar-index.md`.

// Wired into the pass and the view next.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::parse::{Kind, TarEntry, Whiteout};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fs::Dir;

/// The first 8 bytes of every index.
pub(crate) const MAGIC: &[u8; 8] = b"OCITIDX\0";
/// The format version this library writes and reads.
pub(crate) const VERSION: u32 = 1;
const HEADER_SIZE: usize = 64;
const RECORD_SIZE: usize = 112;
const CHECKSUM_SIZE: usize = 32;

/// Record flag: a directory with no entry of its own in the tar, added
/// because entries below it exist.
pub(crate) const FLAG_IMPLICIT: u16 = 1;
/// Record flag: a GNU sparse file, whose data cannot be read through the
/// index.
pub(crate) const FLAG_SPARSE: u16 = 2;
/// Record flag: a hardlink whose target was found (an earlier regular file
/// of the same tar): its data offset and size are the target's.
pub(crate) const FLAG_LINK_RESOLVED: u16 = 4;
/// Record flag: the path is not valid UTF-8.
pub(crate) const FLAG_NOT_UTF8: u16 = 8;
const KNOWN_FLAGS: u16 = FLAG_IMPLICIT | FLAG_SPARSE | FLAG_LINK_RESOLVED | FLAG_NOT_UTF8;

/// One record before serialization.
struct Record {
    entry: TarEntry,
    flags: u16,
}

/// `path` split at its last `/` into (parent, name); the root is ("", "").
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// What the directories a tar implies but has no entries for may add to an
/// index beyond the tar's own size, counting each one's path and record.
/// Each costs its path, and a deep path implies one per component, so a
/// few kilobytes of tar could otherwise make megabytes of index. Real
/// layers stay far below: their directories mostly have entries.
pub(crate) const IMPLICIT_LIMIT: u64 = 16 << 20;

/// The longest index a tar of `tar_len` bytes can have: records (112
/// bytes per 512-byte block of tar at most) and their strings (names,
/// parents no longer than them, links and xattrs, all read from the tar:
/// about twice its size at most), and the implied directories (their paths
/// and records within [`IMPLICIT_LIMIT`] plus the tar's size, their names
/// and parents at most as much again). A longer file is not read.
fn max_len(tar_len: u64) -> u64 {
    tar_len.saturating_mul(5).saturating_add(4 * IMPLICIT_LIMIT)
}

/// Builds the index of a tar from its entries in tar order: the tar is
/// `tar_size` bytes and hashes to `diff_id`. A tar implying more
/// directories than [`IMPLICIT_LIMIT`] allows is `InvalidContent`.
pub(crate) fn build(entries: Vec<TarEntry>, diff_id: &Digest, tar_size: u64) -> Result<Vec<u8>> {
    let mut tree: BTreeMap<Vec<u8>, Record> = BTreeMap::new();
    // The last parent checked to have no non-directory above it: siblings
    // are mostly adjacent, so most entries skip the walk up.
    let mut checked: Option<Vec<u8>> = None;
    for mut entry in entries {
        let parent = split(&entry.path).0;
        if checked.as_deref() != Some(parent) {
            if below_non_directory(&tree, parent) {
                // Extraction cannot create it (ENOTDIR): neither does the index.
                continue;
            }
            checked = Some(parent.to_vec());
        }
        let mut flags = 0;
        if entry.kind == Kind::Hardlink {
            // As extraction does: link(2) to what the target path holds now.
            if let Some(target) = tree.get(&entry.link) {
                let data =
                    target.entry.kind == Kind::File || target.flags & FLAG_LINK_RESOLVED != 0;
                if data {
                    entry.data_offset = target.entry.data_offset;
                    entry.size = target.entry.size;
                    entry.sparse = target.entry.sparse;
                    flags |= FLAG_LINK_RESOLVED;
                }
            }
        }
        if entry.kind != Kind::Dir {
            if checked.as_deref().is_some_and(|c| within(c, &entry.path)) {
                checked = None;
            }
            // A non-directory replacing a directory removes what was below it.
            if tree
                .get(&entry.path)
                .is_some_and(|r| r.entry.kind == Kind::Dir)
            {
                let prefix = [entry.path.as_slice(), b"/"].concat();
                let below: Vec<Vec<u8>> = tree
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in below {
                    tree.remove(&key);
                }
            }
        }
        // The key holds the path until the records are collected.
        let path = std::mem::take(&mut entry.path);
        tree.insert(path, Record { entry, flags });
    }
    // Directories implied by deeper paths, and the root: each path's
    // ancestors, up to the first one already known.
    let mut implicit: Vec<Vec<u8>> = Vec::new();
    if !tree.contains_key(&b""[..]) {
        implicit.push(Vec::new());
    }
    let budget = IMPLICIT_LIMIT.saturating_add(tar_size);
    let mut spent: u64 = 0;
    let mut known = std::collections::HashSet::new();
    let mut last: &[u8] = b"";
    for path in tree.keys() {
        let mut parent = split(path).0;
        // Siblings are mostly adjacent: skip the set for a repeated parent.
        if parent == last {
            continue;
        }
        last = parent;
        while !parent.is_empty() && known.insert(parent) && !tree.contains_key(parent) {
            spent += (parent.len() + RECORD_SIZE) as u64;
            if spent > budget {
                return Err(Error::invalid_content(format!(
                    "tar implies directories it has no entries for, more than an index \
                     keeps ({budget} bytes of paths and records)"
                )));
            }
            implicit.push(parent.to_vec());
            parent = split(parent).0;
        }
    }
    for path in implicit {
        tree.insert(
            path,
            Record {
                entry: TarEntry {
                    path: Vec::new(),
                    kind: Kind::Dir,
                    whiteout: Whiteout::None,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime_sec: 0,
                    mtime_nsec: 0,
                    size: 0,
                    header_offset: 0,
                    data_offset: 0,
                    link: Vec::new(),
                    dev_major: 0,
                    dev_minor: 0,
                    xattrs: Vec::new(),
                    sparse: false,
                },
                flags: FLAG_IMPLICIT,
            },
        );
    }
    // Sorted by (parent, name): an order of indices, so the records (large)
    // are not moved, with each key computed once.
    let records: Vec<Record> = tree
        .into_iter()
        .map(|(path, mut record)| {
            record.entry.path = path;
            record
        })
        .collect();
    let keys: Vec<(&[u8], &[u8])> = records.iter().map(|r| split(&r.entry.path)).collect();
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
    let records: Vec<&Record> = order.into_iter().map(|i| &records[i]).collect();
    Ok(serialize(&records, diff_id, tar_size))
}

/// Whether `path` or one of its ancestors has a record that is not a
/// directory.
fn below_non_directory(tree: &BTreeMap<Vec<u8>, Record>, mut path: &[u8]) -> bool {
    while !path.is_empty() {
        if tree.get(path).is_some_and(|r| r.entry.kind != Kind::Dir) {
            return true;
        }
        path = split(path).0;
    }
    false
}

/// Whether `path` is `dir` or below it.
fn within(path: &[u8], dir: &[u8]) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/')
}

/// The string table: each distinct string of the records once.
#[derive(Default)]
struct Strings<'a> {
    bytes: Vec<u8>,
    seen: HashMap<&'a [u8], u64>,
}

impl<'a> Strings<'a> {
    /// (offset, length) of `s` in the table.
    fn add(&mut self, s: &'a [u8]) -> (u64, u32) {
        if s.is_empty() {
            return (0, 0);
        }
        let at = *self.seen.entry(s).or_insert_with(|| {
            self.bytes.extend_from_slice(s);
            (self.bytes.len() - s.len()) as u64
        });
        (at, s.len() as u32)
    }

    /// (offset, length) of `s`, appended without looking for a copy.
    fn append(&mut self, s: &[u8]) -> (u64, u32) {
        let at = self.bytes.len() as u64;
        self.bytes.extend_from_slice(s);
        (at * u64::from(!s.is_empty()), s.len() as u32)
    }
}

fn serialize(records: &[&Record], diff_id: &Digest, tar_size: u64) -> Vec<u8> {
    let mut strings = Strings::default();
    let (diff_off, diff_len) = strings.add(diff_id.as_str().as_bytes());
    let mut body = Vec::with_capacity(records.len() * RECORD_SIZE);
    for &Record { entry: e, flags } in records {
        let (parent, name) = split(&e.path);
        let (parent_off, parent_len) = strings.add(parent);
        let (name_off, name_len) = strings.add(name);
        let (link_off, link_len) = strings.add(&e.link);
        let mut xattrs = Vec::new();
        if !e.xattrs.is_empty() {
            xattrs.extend_from_slice(&(e.xattrs.len() as u32).to_le_bytes());
            for (key, value) in &e.xattrs {
                for part in [key, value] {
                    xattrs.extend_from_slice(&(part.len() as u32).to_le_bytes());
                    xattrs.extend_from_slice(part);
                }
            }
        }
        let (xattr_off, xattr_len) = strings.append(&xattrs);
        let mut flags = *flags;
        if e.sparse {
            flags |= FLAG_SPARSE;
        }
        if std::str::from_utf8(&e.path).is_err() {
            flags |= FLAG_NOT_UTF8;
        }
        let start = body.len();
        for v in [parent_off, name_off, link_off, xattr_off] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        for v in [parent_len, name_len, link_len, xattr_len] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        for v in [e.header_offset, e.data_offset, e.size] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&e.mtime_sec.to_le_bytes());
        for v in [e.mtime_nsec, e.mode, e.uid, e.gid, e.dev_major, e.dev_minor] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&[e.kind as u8, e.whiteout as u8]);
        body.extend_from_slice(&flags.to_le_bytes());
        body.extend_from_slice(&0u32.to_le_bytes());
        debug_assert_eq!(body.len() - start, RECORD_SIZE);
    }
    let strings_offset = (HEADER_SIZE + body.len()) as u64;
    let mut out = Vec::with_capacity(HEADER_SIZE + body.len() + strings.bytes.len() + 32);
    out.extend_from_slice(MAGIC);
    for v in [VERSION, HEADER_SIZE as u32, RECORD_SIZE as u32, diff_len] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in [
        records.len() as u64,
        strings_offset,
        strings.bytes.len() as u64,
        diff_off,
        tar_size,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    debug_assert_eq!(out.len(), HEADER_SIZE);
    out.extend_from_slice(&body);
    out.extend_from_slice(&strings.bytes);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// An index read back and checked: every string reference is in bounds and
/// every record's kind, whiteout and flags are known, so the accessors
/// cannot fail; the records are strictly sorted, so lookups are binary
/// searches.
#[derive(Debug)]
pub(crate) struct TarIndex {
    bytes: Vec<u8>,
    count: usize,
    strings: usize,
    diff_id: Digest,
    tar_size: u64,
}

impl TarIndex {
    /// Reads the index file `name` in `dir` for the tar `diff_id`, whose
    /// file is `tar_len` bytes. `None` when there is no regular file there
    /// (missing, a symlink, a FIFO...); an error when it is corrupt,
    /// truncated, of another version, for another diff_id or tar length,
    /// or longer than an index of such a tar can be, which is refused
    /// before it is read (the caller rebuilds it, never trusts it).
    pub(crate) fn open_in(
        dir: &Dir,
        name: &str,
        diff_id: &Digest,
        tar_len: u64,
    ) -> Result<Option<TarIndex>> {
        let path = dir.join(name);
        let Some(mut file) = dir.open_regular(name)? else {
            return Ok(None);
        };
        let in_index = |e: Error| {
            Error::new(
                e.kind(),
                format!("index {}: {}", path.display(), e.message()),
            )
        };
        let len = file
            .metadata()
            .map_err(|e| Error::io_at("reading the size of", &path, e))?
            .len();
        if len > max_len(tar_len) {
            return Err(in_index(Error::invalid_content(format!(
                "tar index is {len} bytes, more than the index of a {tar_len}-byte tar can be"
            ))));
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)
            .map_err(|e| Error::io_at("reading", &path, e))?;
        let index = TarIndex::from_bytes(bytes, diff_id).map_err(in_index)?;
        if index.tar_size != tar_len {
            return Err(in_index(Error::invalid_content(format!(
                "tar index describes a {}-byte tar, not this {tar_len}-byte one",
                index.tar_size
            ))));
        }
        Ok(Some(index))
    }

    /// Checks `bytes` as the index of the tar `diff_id`.
    pub(crate) fn from_bytes(bytes: Vec<u8>, diff_id: &Digest) -> Result<TarIndex> {
        let bad = |what: &str| Error::invalid_content(format!("tar index {what}"));
        if bytes.len() < HEADER_SIZE + CHECKSUM_SIZE {
            return Err(bad("is truncated"));
        }
        if &bytes[..8] != MAGIC {
            return Err(bad("has no magic number"));
        }
        let version = u32_at(&bytes, 8);
        if version != VERSION {
            return Err(bad(&format!(
                "is version {version}, this library reads {VERSION}"
            )));
        }
        if u32_at(&bytes, 12) as usize != HEADER_SIZE || u32_at(&bytes, 16) as usize != RECORD_SIZE
        {
            return Err(bad("has an unexpected header or record size"));
        }
        let body = bytes.len() - CHECKSUM_SIZE;
        if Sha256::digest(&bytes[..body]).as_slice() != &bytes[body..] {
            return Err(bad("fails its checksum (corrupt or truncated)"));
        }
        let diff_len = u32_at(&bytes, 20) as u64;
        let count = u64_at(&bytes, 24);
        let strings = u64_at(&bytes, 32);
        let strings_len = u64_at(&bytes, 40);
        let diff_off = u64_at(&bytes, 48);
        let tar_size = u64_at(&bytes, 56);
        let layout_ok = count
            .checked_mul(RECORD_SIZE as u64)
            .and_then(|r| r.checked_add(HEADER_SIZE as u64))
            .is_some_and(|end| end == strings)
            && strings.checked_add(strings_len) == Some(body as u64);
        if !layout_ok {
            return Err(bad("has inconsistent sizes"));
        }
        let (count, strings) = (count as usize, strings as usize);
        let table = &bytes[strings..body];
        let string = |off: u64, len: u64| -> Result<&[u8]> {
            off.checked_add(len)
                .filter(|&end| end <= table.len() as u64)
                .map(|end| &table[off as usize..end as usize])
                .ok_or_else(|| bad("has a string out of bounds"))
        };
        let stored = std::str::from_utf8(string(diff_off, diff_len)?)
            .ok()
            .and_then(|t| Digest::parse(t).ok())
            .ok_or_else(|| bad("has a malformed diff_id"))?;
        if &stored != diff_id {
            return Err(bad(&format!("describes {stored}, not {diff_id}")));
        }
        let index = TarIndex {
            bytes: Vec::new(),
            count,
            strings,
            diff_id: stored,
            tar_size,
        };
        let mut previous: Option<(&[u8], &[u8])> = None;
        for i in 0..count {
            let r = &bytes[HEADER_SIZE + i * RECORD_SIZE..][..RECORD_SIZE];
            let mut refs = [&[][..]; 4];
            for (k, slot) in refs.iter_mut().enumerate() {
                *slot = string(u64_at(r, 8 * k), u64::from(u32_at(r, 32 + 4 * k)))?;
            }
            let [parent, name, _, xattrs] = refs;
            let root = parent.is_empty() && name.is_empty();
            if (i == 0) != root {
                return Err(bad(&format!(
                    "record {i}: the root must be record 0, and only it"
                )));
            }
            if (name.is_empty() && !root) || name.contains(&b'/') || parent.ends_with(b"/") {
                return Err(bad(&format!("record {i} has a malformed path")));
            }
            if previous.is_some_and(|p| p >= (parent, name)) {
                return Err(bad(&format!("record {i} is out of order")));
            }
            previous = Some((parent, name));
            // A record's header and data lie inside its tar (a resolved
            // hardlink's data is its target's, before its own header): an
            // index rewritten to point past the end is refused even with
            // a valid checksum, so a view never hands out such a range.
            let (header, data, size) = (u64_at(r, 48), u64_at(r, 56), u64_at(r, 64));
            let inside =
                header <= tar_size && data.checked_add(size).is_some_and(|end| end <= tar_size);
            if !inside {
                return Err(bad(&format!(
                    "record {i} lies outside its {tar_size}-byte tar"
                )));
            }
            let valid = Kind::from_byte(r[104]).is_some()
                && Whiteout::from_byte(r[105]).is_some()
                && u16_at(r, 106) & !KNOWN_FLAGS == 0
                && u32_at(r, 80) < 1_000_000_000
                && parse_xattrs(xattrs).is_some();
            if !valid {
                return Err(bad(&format!("record {i} is malformed")));
            }
        }
        Ok(TarIndex { bytes, ..index })
    }

    /// The diff_id of the tar this index describes.
    pub(crate) fn diff_id(&self) -> &Digest {
        &self.diff_id
    }

    /// The size in bytes of the tar this index describes.
    #[cfg(test)]
    pub(crate) fn tar_size(&self) -> u64 {
        self.tar_size
    }

    /// The number of records.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The record at `at` (< [`len`](Self::len)), in (parent, name) order.
    pub(crate) fn entry(&self, at: usize) -> Entry<'_> {
        assert!(at < self.count, "record {at} of {}", self.count);
        Entry { index: self, at }
    }

    /// The record of `path`, a cleaned path (no leading `/`, no `.`, `..`
    /// or empty components; `""` is the root).
    pub(crate) fn lookup(&self, path: &[u8]) -> Option<Entry<'_>> {
        let key = split(path);
        let at = self.partition(|e| e.key() < key);
        (at < self.count && self.entry(at).key() == key).then(|| self.entry(at))
    }

    /// The records whose parent is `dir` (a cleaned path), sorted by name
    /// bytewise; the root is not its own child.
    pub(crate) fn children(&self, dir: &[u8]) -> impl Iterator<Item = Entry<'_>> {
        let start = self.partition(|e| e.parent() < dir);
        let end = self.partition(|e| e.parent() <= dir);
        (start..end)
            .map(|at| self.entry(at))
            .filter(|e| !e.name().is_empty())
    }

    /// The first record for which `before` is false (`before` is true for a
    /// prefix of the records).
    fn partition(&self, before: impl Fn(&Entry<'_>) -> bool) -> usize {
        let (mut low, mut high) = (0, self.count);
        while low < high {
            let mid = low + (high - low) / 2;
            if before(&self.entry(mid)) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }
}

/// The (name, value) pairs of a record's xattr block, if well formed.
fn parse_xattrs(mut block: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut pairs = Vec::new();
    if block.is_empty() {
        return Some(pairs);
    }
    let count = u32_at(block.get(..4)?, 0);
    block = &block[4..];
    fn take<'a>(block: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32_at(block.get(..4)?, 0) as usize;
        let part = block.get(4..4usize.checked_add(len)?)?;
        *block = &block[4 + len..];
        Some(part)
    }
    for _ in 0..count {
        let key = take(&mut block)?;
        let value = take(&mut block)?;
        pairs.push((key, value));
    }
    block.is_empty().then_some(pairs)
}

/// One record of a [`TarIndex`].
#[derive(Clone, Copy)]
pub(crate) struct Entry<'a> {
    index: &'a TarIndex,
    at: usize,
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("path", &String::from_utf8_lossy(&self.path()))
            .field("kind", &self.kind())
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

impl<'a> Entry<'a> {
    fn record(&self) -> &'a [u8] {
        &self.index.bytes[HEADER_SIZE + self.at * RECORD_SIZE..][..RECORD_SIZE]
    }

    /// String `k` of the record (0 parent, 1 name, 2 link, 3 xattrs),
    /// bounds checked on open.
    fn string(&self, k: usize) -> &'a [u8] {
        let r = self.record();
        let off = self.index.strings + u64_at(r, 8 * k) as usize;
        &self.index.bytes[off..off + u32_at(r, 32 + 4 * k) as usize]
    }

    fn key(&self) -> (&'a [u8], &'a [u8]) {
        (self.parent(), self.name())
    }

    /// The directory holding this entry (`""` for the top level and root).
    pub(crate) fn parent(&self) -> &'a [u8] {
        self.string(0)
    }

    /// The last path component (`""` for the root).
    pub(crate) fn name(&self) -> &'a [u8] {
        self.string(1)
    }

    /// The whole cleaned path.
    pub(crate) fn path(&self) -> Vec<u8> {
        match self.parent() {
            [] => self.name().to_vec(),
            parent => [parent, b"/", self.name()].concat(),
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        Kind::from_byte(self.record()[104]).expect("checked on open")
    }

    pub(crate) fn whiteout(&self) -> Whiteout {
        Whiteout::from_byte(self.record()[105]).expect("checked on open")
    }

    fn flags(&self) -> u16 {
        u16_at(self.record(), 106)
    }

    /// A directory added for deeper entries, with no tar entry of its own.
    pub(crate) fn is_implicit(&self) -> bool {
        self.flags() & FLAG_IMPLICIT != 0
    }

    /// A GNU sparse file (or a hardlink to one): its data is not readable.
    pub(crate) fn is_sparse(&self) -> bool {
        self.flags() & FLAG_SPARSE != 0
    }

    /// A hardlink whose data offset and size are its target's.
    pub(crate) fn is_link_resolved(&self) -> bool {
        self.flags() & FLAG_LINK_RESOLVED != 0
    }

    /// The path is not valid UTF-8.
    pub(crate) fn is_not_utf8(&self) -> bool {
        self.flags() & FLAG_NOT_UTF8 != 0
    }

    /// A symlink's target as stored, a hardlink's cleaned target path.
    pub(crate) fn link(&self) -> &'a [u8] {
        self.string(2)
    }

    /// Extended attributes, sorted by name.
    pub(crate) fn xattrs(&self) -> Vec<(&'a [u8], &'a [u8])> {
        parse_xattrs(self.string(3)).expect("checked on open")
    }

    pub(crate) fn header_offset(&self) -> u64 {
        u64_at(self.record(), 48)
    }

    /// Where the data starts in the tar (a resolved hardlink: its target's).
    pub(crate) fn data_offset(&self) -> u64 {
        u64_at(self.record(), 56)
    }

    /// Data bytes (regular files and resolved hardlinks), else 0.
    pub(crate) fn size(&self) -> u64 {
        u64_at(self.record(), 64)
    }

    pub(crate) fn mtime_sec(&self) -> i64 {
        u64_at(self.record(), 72) as i64
    }

    pub(crate) fn mtime_nsec(&self) -> u32 {
        u32_at(self.record(), 80)
    }

    /// Permission bits with setuid, setgid and sticky (`& 0o7777`).
    pub(crate) fn mode(&self) -> u32 {
        u32_at(self.record(), 84)
    }

    pub(crate) fn uid(&self) -> u32 {
        u32_at(self.record(), 88)
    }

    pub(crate) fn gid(&self) -> u32 {
        u32_at(self.record(), 92)
    }

    pub(crate) fn dev_major(&self) -> u32 {
        u32_at(self.record(), 96)
    }

    pub(crate) fn dev_minor(&self) -> u32 {
        u32_at(self.record(), 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar_index::parse::testing::*;
    use crate::tar_index::parse::Parser;
    use crate::ErrorKind;

    fn diff_id() -> Digest {
        Digest::sha256_of(b"the tar")
    }

    /// The index bytes of a hand-made tar.
    fn index_bytes(tar: &[u8]) -> Vec<u8> {
        let mut parser = Parser::new();
        parser.feed(tar).unwrap();
        let size = parser.position();
        build(parser.finish().unwrap(), &diff_id(), size).unwrap()
    }

    fn index(tar: &[u8]) -> TarIndex {
        TarIndex::from_bytes(index_bytes(tar), &diff_id()).unwrap()
    }

    fn names<'a>(entries: impl Iterator<Item = Entry<'a>>) -> Vec<String> {
        entries
            .map(|e| String::from_utf8_lossy(e.name()).into_owned())
            .collect()
    }

    fn sample() -> Vec<u8> {
        let mut xattr = pax(
            b'x',
            &[(b"SCHILY.xattr.user.k", b"v\0w"), (b"mtime", b"5.5")],
        );
        xattr.extend(file(b"etc/passwd", b"root:x:0:0"));
        [
            entry(b"./", b'5', b"", b""),
            entry(b"etc/", b'5', b"", b""),
            xattr,
            file(b"etc/hosts", b"127.0.0.1"),
            file(b"etc-file", b""),
            entry(b"etc/link", b'2', b"", b"/etc/passwd"),
            file(b"usr/lib/deep/x", b"x"),
            file(b"\xffname", b""),
            file(b"etc/.wh.gone", b""),
            end(),
        ]
        .concat()
    }

    #[test]
    fn lookup_children_and_accessors_round_trip() {
        let tar = sample();
        let index = index(&tar);
        assert_eq!(index.diff_id(), &diff_id());
        assert_eq!(index.tar_size(), tar.len() as u64);
        let passwd = index.lookup(b"etc/passwd").unwrap();
        assert_eq!(passwd.path(), b"etc/passwd");
        assert_eq!((passwd.kind(), passwd.size()), (Kind::File, 10));
        assert_eq!(&tar[passwd.data_offset() as usize..][..10], b"root:x:0:0");
        assert_eq!(passwd.header_offset(), 1024, "its PAX header");
        assert_eq!((passwd.mtime_sec(), passwd.mtime_nsec()), (5, 500_000_000));
        assert_eq!(
            (passwd.mode(), passwd.uid(), passwd.gid()),
            (0o644, 1000, 1001)
        );
        assert_eq!(passwd.xattrs(), [(&b"user.k"[..], &b"v\0w"[..])]);
        assert_eq!(index.lookup(b"etc/link").unwrap().link(), b"/etc/passwd");
        assert_eq!(
            index.lookup(b"etc/.wh.gone").unwrap().whiteout(),
            Whiteout::Removed
        );
        assert!(index.lookup(b"etc/missing").is_none());
        assert!(index.lookup(b"et").is_none());
        // Implicit directories: usr and usr/lib/deep have no tar entry.
        let usr = index.lookup(b"usr/lib/deep").unwrap();
        assert!(usr.is_implicit());
        assert_eq!((usr.kind(), usr.mode(), usr.uid()), (Kind::Dir, 0o755, 0));
        assert!(!index.lookup(b"etc").unwrap().is_implicit());
        assert!(!index.lookup(b"").unwrap().is_implicit(), "./ is the root");
        assert!(index.lookup(b"\xffname").unwrap().is_not_utf8());
        assert_eq!(
            names(index.children(b"")),
            ["etc", "etc-file", "usr", "\u{fffd}name"]
        );
        assert_eq!(
            names(index.children(b"etc")),
            [".wh.gone", "hosts", "link", "passwd"]
        );
        assert_eq!(names(index.children(b"usr/lib")), ["deep"]);
        assert_eq!(names(index.children(b"etc/passwd")), Vec::<String>::new());
        assert_eq!(names(index.children(b"nowhere")), Vec::<String>::new());
        for at in 0..index.len() {
            let e = index.entry(at);
            assert_eq!(index.lookup(&e.path()).unwrap().path(), e.path());
        }
    }

    #[test]
    fn an_empty_tar_has_an_implicit_root() {
        let index = index(&end());
        assert_eq!(index.len(), 1);
        assert!(index.lookup(b"").unwrap().is_implicit());
        assert_eq!(index.children(b"").count(), 0);
    }

    #[test]
    fn later_duplicates_replace_earlier_ones_as_extraction_does() {
        let tar = [
            file(b"f", b"one"),
            file(b"f", b"two!"),
            entry(b"d/", b'5', b"", b""),
            file(b"d/kept", b""),
            entry(b"d/", b'5', b"", b""),
            entry(b"gone/", b'5', b"", b""),
            file(b"gone/child", b""),
            file(b"gone/sub/grandchild", b""),
            file(b"gone-sibling", b""),
            entry(b"gone", b'2', b"", b"elsewhere"),
            file(b"was-file", b""),
            file(b"was-file/under-a-file", b""),
            entry(b"was-file/", b'5', b"", b""),
            entry(b"l", b'2', b"", b"d"),
            file(b"l/under-a-symlink", b""),
            entry(b"e/", b'5', b"", b""),
            file(b"e/x", b""),
            file(b"e", b""),
            file(b"e/y", b""),
            file(b"w/x", b""),
            file(b"w/.wh.x", b""),
            end(),
        ]
        .concat();
        let index = index(&tar);
        let f = index.lookup(b"f").unwrap();
        assert_eq!(
            &tar[f.data_offset() as usize..][..f.size() as usize],
            b"two!"
        );
        assert!(
            index.lookup(b"d/kept").is_some(),
            "a directory over a directory keeps its children"
        );
        assert_eq!(index.lookup(b"gone").unwrap().kind(), Kind::Symlink);
        assert!(index.lookup(b"gone/child").is_none());
        assert!(index.lookup(b"gone/sub").is_none());
        assert!(index.lookup(b"gone/sub/grandchild").is_none());
        assert!(index.lookup(b"gone-sibling").is_some());
        assert_eq!(index.lookup(b"was-file").unwrap().kind(), Kind::Dir);
        // Extraction cannot create entries below a non-directory.
        assert!(index.lookup(b"was-file/under-a-file").is_none());
        assert!(index.lookup(b"l/under-a-symlink").is_none());
        assert!(index.lookup(b"l").is_some());
        assert_eq!(index.lookup(b"e").unwrap().kind(), Kind::File);
        assert!(index.lookup(b"e/x").is_none());
        assert!(index.lookup(b"e/y").is_none());
        // A whiteout and an entry of the same name in one layer both stay:
        // the whiteout applies to lower layers only.
        assert_eq!(index.lookup(b"w/x").unwrap().whiteout(), Whiteout::None);
        assert_eq!(
            index.lookup(b"w/.wh.x").unwrap().whiteout(),
            Whiteout::Removed
        );
    }

    #[test]
    fn hardlinks_resolve_to_earlier_files_only() {
        let tar = [
            file(b"a", b"first"),
            entry(b"to-a", b'1', b"", b"./a"),
            entry(b"chain", b'1', b"", b"to-a"),
            entry(b"early", b'1', b"", b"late"),
            entry(b"missing", b'1', b"", b"nowhere"),
            entry(b"dir/", b'5', b"", b""),
            entry(b"to-dir", b'1', b"", b"dir"),
            entry(b"escape", b'1', b"", b"../../a"),
            file(b"late", b"x"),
            file(b"a", b"second"),
            end(),
        ]
        .concat();
        let index = index(&tar);
        let data = |path: &[u8]| {
            let e = index.lookup(path).unwrap();
            assert_eq!(e.kind(), Kind::Hardlink);
            e.is_link_resolved()
                .then(|| tar[e.data_offset() as usize..][..e.size() as usize].to_vec())
        };
        assert_eq!(
            data(b"to-a").as_deref(),
            Some(&b"first"[..]),
            "the data a had then"
        );
        assert_eq!(data(b"chain").as_deref(), Some(&b"first"[..]));
        assert_eq!(
            data(b"escape").as_deref(),
            Some(&b"first"[..]),
            "cleaned inside the root"
        );
        for unresolved in [&b"early"[..], b"missing", b"to-dir"] {
            assert_eq!(data(unresolved), None);
            assert_eq!(index.lookup(unresolved).unwrap().size(), 0);
        }
        assert_eq!(index.lookup(b"early").unwrap().link(), b"late");
    }

    /// Rewrites an index's checksum after a deliberate change.
    fn reseal(bytes: &mut [u8]) {
        let body = bytes.len() - CHECKSUM_SIZE;
        let sum = Sha256::digest(&bytes[..body]);
        bytes[body..].copy_from_slice(&sum);
    }

    #[test]
    fn every_corrupt_byte_and_every_truncation_is_refused() {
        let good = index_bytes(&sample());
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            let e = TarIndex::from_bytes(bad, &diff_id()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidContent, "byte {at}: {e}");
        }
        for len in 0..good.len() {
            let e = TarIndex::from_bytes(good[..len].to_vec(), &diff_id()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidContent, "{len} bytes: {e}");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(TarIndex::from_bytes(longer, &diff_id()).is_err());
    }

    #[test]
    fn resealed_but_inconsistent_indexes_are_refused() {
        let good = index_bytes(&sample());
        let record = |i: usize| HEADER_SIZE + i * RECORD_SIZE;
        type Corruption = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(&str, Corruption)> = vec![
            ("version", Box::new(|b| b[8] = 2)),
            (
                "string out of bounds",
                Box::new(move |b| b[record(1) + 8..][..8].copy_from_slice(&u64::MAX.to_le_bytes())),
            ),
            (
                "length out of bounds",
                Box::new(move |b| {
                    b[record(1) + 36..][..4].copy_from_slice(&u32::MAX.to_le_bytes())
                }),
            ),
            ("kind", Box::new(move |b| b[record(1) + 104] = 9)),
            ("whiteout", Box::new(move |b| b[record(1) + 105] = 3)),
            ("flags", Box::new(move |b| b[record(1) + 107] = 0x80)),
            (
                "nanoseconds",
                Box::new(move |b| {
                    b[record(1) + 80..][..4].copy_from_slice(&1_000_000_000u32.to_le_bytes())
                }),
            ),
            (
                "order",
                Box::new(move |b| {
                    let (r1, r2) = (record(1), record(2));
                    let first = b[r1..r1 + RECORD_SIZE].to_vec();
                    b.copy_within(r2..r2 + RECORD_SIZE, r1);
                    b[r2..r2 + RECORD_SIZE].copy_from_slice(&first);
                }),
            ),
            ("count", Box::new(|b| b[24] += 1)),
            (
                "data past the tar's end",
                Box::new(move |b| {
                    b[record(3) + 64..][..8].copy_from_slice(&u64::MAX.to_le_bytes())
                }),
            ),
            (
                "a shorter tar",
                Box::new(|b| b[56..64].copy_from_slice(&512u64.to_le_bytes())),
            ),
            (
                "a header past the tar's end",
                Box::new(move |b| {
                    b[record(3) + 48..][..8].copy_from_slice(&u64::MAX.to_le_bytes())
                }),
            ),
            (
                "no root",
                Box::new(move |b| {
                    let name = b[record(1) + 8..][..8].to_vec();
                    let len = b[record(1) + 36..][..4].to_vec();
                    b[record(0) + 8..][..8].copy_from_slice(&name);
                    b[record(0) + 36..][..4].copy_from_slice(&len);
                }),
            ),
        ];
        for (what, corrupt) in cases {
            let mut bad = good.clone();
            corrupt(&mut bad);
            reseal(&mut bad);
            let e = TarIndex::from_bytes(bad, &diff_id()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidContent, "{what}: {e}");
        }
    }

    #[test]
    fn deep_trees_without_directory_entries_are_refused_not_blown_up() {
        // Each entry implies 2000 directories: 4 MB of paths, for 5 KB of tar.
        let deep = |n: usize| {
            let mut tar = Vec::new();
            for i in 0..n {
                let path = format!("p{i}/{}f", "a/".repeat(2000));
                tar.extend(pax(b'x', &[(b"path", path.as_bytes())]));
                tar.extend(file(b"x", b""));
            }
            tar.extend(end());
            let mut parser = Parser::new();
            parser.feed(&tar).unwrap();
            let size = parser.position();
            (build(parser.finish().unwrap(), &diff_id(), size), size)
        };
        let index = TarIndex::from_bytes(deep(1).0.unwrap(), &diff_id()).unwrap();
        assert_eq!(index.len(), 1 + 2001 + 1);
        let (built, size) = deep(5);
        let e = built.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidContent);
        assert_eq!(
            e.message(),
            format!(
                "tar implies directories it has no entries for, more than an index keeps \
                 ({} bytes of paths and records)",
                IMPLICIT_LIMIT + size
            )
        );
    }

    #[test]
    fn an_index_for_another_tar_is_refused() {
        let e =
            TarIndex::from_bytes(index_bytes(&sample()), &Digest::sha256_of(b"other")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidContent);
        assert!(
            e.message().contains(&format!("describes {}", diff_id())),
            "{e}"
        );
    }

    #[test]
    fn open_in_reads_regular_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("good"), index_bytes(&sample())).unwrap();
        std::fs::write(tmp.path().join("bad"), b"garbage").unwrap();
        std::os::unix::fs::symlink("good", tmp.path().join("link")).unwrap();
        let fifo = std::ffi::CString::new(
            tmp.path()
                .join("fifo")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let tar_len = sample().len() as u64;
        let open = |name: &str, tar_len: u64| TarIndex::open_in(&dir, name, &diff_id(), tar_len);
        assert_eq!(open("good", tar_len).unwrap().unwrap().len(), 12);
        for none in ["missing", "link", "fifo"] {
            assert!(open(none, tar_len).unwrap().is_none(), "{none}");
        }
        let e = open("bad", tar_len).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidContent);
        assert!(e.message().contains("bad: tar index is truncated"), "{e}");
        // A sound index of a tar of another length is not this tar's.
        let e = open("good", tar_len + 512).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidContent);
        assert_eq!(
            e.message(),
            format!(
                "index {}: tar index describes a {tar_len}-byte tar, not this {}-byte one",
                tmp.path().join("good").display(),
                tar_len + 512
            )
        );
        // A file longer than any index of the tar is refused unread (a
        // sparse file: no disk is spent on it).
        let huge = std::fs::File::create(tmp.path().join("huge")).unwrap();
        huge.set_len(max_len(tar_len) + 1).unwrap();
        let e = open("huge", tar_len).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidContent);
        assert!(e.message().contains("more than the index of a"), "{e}");
        assert_eq!(
            open("good", 0).unwrap_err().kind(),
            ErrorKind::InvalidContent
        );
    }
}
