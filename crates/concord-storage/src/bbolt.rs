//! The bbolt file format (etcd's backend database), read and written whole, in our own
//! code: what `etcdctl snapshot save` produces and `etcdctl snapshot restore|status` read.
//!
//! A bbolt file is an array of pages (4096 bytes here; a reader takes the size from the
//! meta page). Every page starts with a 16-byte header — id `u64`, flags `u16`, element
//! count `u16`, overflow `u32` (the page spans `overflow + 1` pages) — all little-endian.
//!
//! * Pages 0 and 1 are **meta** pages (flag `0x04`): magic `0xED0CDAED`, version 2, page
//!   size, flags, the root bucket (root page id, sequence), the freelist page id, the high
//!   water mark (first page id past the file's pages), the transaction id and an FNV-1a
//!   64 checksum of the 56 bytes before it. A reader uses the valid meta with the higher
//!   transaction id.
//! * **Branch** pages (`0x01`) hold `count` elements of 16 bytes — key position (relative
//!   to the element), key size, child page id — then the keys; each key is the first key
//!   of its child.
//! * **Leaf** pages (`0x02`) hold elements of 16 bytes — flags (`0x01`: the value is a
//!   nested bucket), position, key size, value size — then keys and values.
//! * A **bucket** is a B+tree of such pages. Its value in the parent is a 16-byte header
//!   (root page id, sequence); root 0 means an *inline* bucket whose leaf page follows the
//!   header inside the value. The meta page's root bucket holds the top-level buckets.
//! * The **freelist** page (`0x10`) lists free page ids (`count == 0xFFFF`: the real count
//!   is the first `u64`); id `u64::MAX` means the freelist was not written.
//!
//! # Guarantees
//!
//! 1. [`read`] never panics and never loops on any input: every offset is bounds-checked,
//!    every page may be referenced once, nesting is bounded, keys must ascend.
//! 2. [`write`] produces a file that bbolt opens and `tx.Check()` accepts: every page below
//!    the high water mark is reachable exactly once (metas, an empty freelist, the trees),
//!    keys ascend, each branch key is its child's first key. Tested against etcd 3.4.

use std::collections::HashSet;

/// Page size of the files [`write`] produces (bbolt's default on x86-64 and arm64 Linux).
pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const META_CHECKSUMMED: usize = 56;
const F_BRANCH: u16 = 0x01;
const F_LEAF: u16 = 0x02;
const F_META: u16 = 0x04;
const F_FREELIST: u16 = 0x10;
const BUCKET_LEAF: u32 = 0x01;
const MAX_DEPTH: usize = 64;

/// A bucket: its key/value pairs and its nested buckets, each in ascending key order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Plain entries.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Nested buckets by name.
    pub buckets: Vec<(Vec<u8>, Bucket)>,
}

impl Bucket {
    /// The nested bucket `name`, if any.
    pub fn bucket(&self, name: &[u8]) -> Option<&Bucket> {
        self.buckets
            .iter()
            .find(|(n, _)| n.as_slice() == name)
            .map(|(_, b)| b)
    }

    /// The value of entry `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.entries
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
            .ok()
            .map(|i| self.entries[i].1.as_slice())
    }
}

/// A whole database as read by [`read`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Database {
    /// The root bucket; etcd keeps only buckets in it.
    pub root: Bucket,
    /// Page size of the file.
    pub page_size: usize,
    /// The high water mark: pages in use, so `page_size * high_water` is bbolt's
    /// `tx.Size()` (etcd's "total size").
    pub high_water: u64,
    /// Transaction id of the meta page used.
    pub txid: u64,
}

/// Why a file is not a readable bbolt database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoltError {
    /// Neither meta page is valid (bbolt's own message for this case).
    #[error("invalid database")]
    Invalid,
    /// A page is damaged or the tree is malformed.
    #[error("bbolt page {page}: {reason}")]
    Page {
        /// The page id.
        page: u64,
        /// What is wrong.
        reason: String,
    },
}

fn bad(page: u64, reason: impl Into<String>) -> BoltError {
    BoltError::Page {
        page,
        reason: reason.into(),
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn fnv1a64(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    page_size: u32,
    root: u64,
    high_water: u64,
    txid: u64,
}

/// The meta stored in the page at byte `at`, if valid.
fn meta_at(data: &[u8], at: usize) -> Option<Meta> {
    let m = data.get(at + PAGE_HEADER..at + PAGE_HEADER + META_CHECKSUMMED + 8)?;
    if u16_at(data, at + 8)? & F_META == 0
        || u32_at(m, 0)? != MAGIC
        || u32_at(m, 4)? != VERSION
        || u64_at(m, 56)? != fnv1a64(&m[..META_CHECKSUMMED])
    {
        return None;
    }
    Some(Meta {
        page_size: u32_at(m, 8)?,
        root: u64_at(m, 16)?,
        high_water: u64_at(m, 40)?,
        txid: u64_at(m, 48)?,
    })
}

/// Whether `data` starts like a bbolt file (a valid first meta page).
pub fn is_bolt(data: &[u8]) -> bool {
    meta_at(data, 0).is_some()
}

/// Reads a whole database. Bytes past the high water mark (etcd's SHA-256 trailer on a
/// saved snapshot) are ignored.
pub fn read(data: &[u8]) -> Result<Database, BoltError> {
    // As bbolt: the page size comes from the first meta if it is valid, else the default.
    let first = meta_at(data, 0);
    let page_size = first.map_or(PAGE_SIZE, |m| m.page_size as usize);
    if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(BoltError::Invalid);
    }
    let second = meta_at(data, page_size).filter(|m| m.page_size as usize == page_size);
    let meta = match (first, second) {
        (Some(a), Some(b)) => {
            if b.txid > a.txid {
                b
            } else {
                a
            }
        }
        (Some(m), None) | (None, Some(m)) => m,
        (None, None) => return Err(BoltError::Invalid),
    };
    let pages = (data.len() / page_size) as u64;
    if meta.high_water < 3 || meta.high_water > pages {
        return Err(bad(
            0,
            format!(
                "high water mark {} outside the file's {pages} pages",
                meta.high_water
            ),
        ));
    }
    let mut reader = Reader {
        data,
        page_size,
        high_water: meta.high_water,
        seen: HashSet::new(),
    };
    let root = reader.bucket(meta.root, None, 0)?;
    Ok(Database {
        root,
        page_size,
        high_water: meta.high_water,
        txid: meta.txid,
    })
}

struct Reader<'a> {
    data: &'a [u8],
    page_size: usize,
    high_water: u64,
    seen: HashSet<u64>,
}

impl<'a> Reader<'a> {
    /// The bytes of page `id`, overflow pages included; each page may be read once.
    fn page(&mut self, id: u64) -> Result<&'a [u8], BoltError> {
        if id < 2 || id >= self.high_water {
            return Err(bad(id, "page id out of range"));
        }
        let at = id as usize * self.page_size;
        let overflow = u32_at(self.data, at + 12).ok_or_else(|| bad(id, "truncated"))?;
        let span = (u64::from(overflow) + 1)
            .checked_add(id)
            .filter(|end| *end <= self.high_water)
            .ok_or_else(|| bad(id, "overflow past the high water mark"))?;
        for p in id..span {
            if !self.seen.insert(p) {
                return Err(bad(p, "page referenced twice"));
            }
        }
        let end = span as usize * self.page_size;
        let page = self.data.get(at..end).ok_or_else(|| bad(id, "truncated"))?;
        if u64_at(page, 0) != Some(id) {
            return Err(bad(id, "page header names another page"));
        }
        Ok(page)
    }

    /// A bucket from its header: `root` page, or the inline page in `inline`.
    fn bucket(
        &mut self,
        root: u64,
        inline: Option<&'a [u8]>,
        depth: usize,
    ) -> Result<Bucket, BoltError> {
        if depth > MAX_DEPTH {
            return Err(bad(root, "buckets nested too deep"));
        }
        let mut out = Bucket::default();
        match inline {
            Some(page) => self.leaf(root, page, &mut out, depth)?,
            None => self.node(root, &mut out, depth, 0)?,
        }
        Ok(out)
    }

    fn node(
        &mut self,
        id: u64,
        out: &mut Bucket,
        bucket_depth: usize,
        depth: usize,
    ) -> Result<(), BoltError> {
        if depth > MAX_DEPTH {
            return Err(bad(id, "tree too deep"));
        }
        let page = self.page(id)?;
        let flags = u16_at(page, 8).ok_or_else(|| bad(id, "truncated"))?;
        if flags & F_LEAF != 0 {
            return self.leaf(id, page, out, bucket_depth);
        }
        if flags & F_BRANCH == 0 {
            return Err(bad(id, format!("invalid page type {flags:#x}")));
        }
        let count = u16_at(page, 10).unwrap_or(0) as usize;
        let mut children = Vec::with_capacity(count);
        let mut last: Option<&[u8]> = None;
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let (pos, ksize, child) = (|| {
                Some((
                    u32_at(page, e)? as usize,
                    u32_at(page, e + 4)? as usize,
                    u64_at(page, e + 8)?,
                ))
            })()
            .ok_or_else(|| bad(id, "truncated branch element"))?;
            let key = page
                .get(e + pos..e + pos + ksize)
                .ok_or_else(|| bad(id, "branch key out of the page"))?;
            if last.is_some_and(|l| l >= key) {
                return Err(bad(id, "branch keys out of order"));
            }
            last = Some(key);
            children.push(child);
        }
        for child in children {
            self.node(child, out, bucket_depth, depth + 1)?;
        }
        Ok(())
    }

    fn leaf(
        &mut self,
        id: u64,
        page: &'a [u8],
        out: &mut Bucket,
        depth: usize,
    ) -> Result<(), BoltError> {
        let count = u16_at(page, 10).ok_or_else(|| bad(id, "truncated"))? as usize;
        for i in 0..count {
            let e = PAGE_HEADER + i * ELEMENT;
            let (flags, pos, ksize, vsize) = (|| {
                Some((
                    u32_at(page, e)?,
                    u32_at(page, e + 4)? as usize,
                    u32_at(page, e + 8)? as usize,
                    u32_at(page, e + 12)? as usize,
                ))
            })()
            .ok_or_else(|| bad(id, "truncated leaf element"))?;
            let k = e.checked_add(pos).ok_or_else(|| bad(id, "bad offset"))?;
            let v = k.checked_add(ksize).ok_or_else(|| bad(id, "bad offset"))?;
            let key = page
                .get(k..v)
                .ok_or_else(|| bad(id, "key out of the page"))?;
            let value = v
                .checked_add(vsize)
                .and_then(|end| page.get(v..end))
                .ok_or_else(|| bad(id, "value out of the page"))?;
            let previous = out
                .entries
                .last()
                .map(|(k, _)| k)
                .max(out.buckets.last().map(|(k, _)| k));
            if previous.is_some_and(|p| p.as_slice() >= key) {
                return Err(bad(id, "keys out of order"));
            }
            if flags & BUCKET_LEAF != 0 {
                let (root, inline) = match (u64_at(value, 0), value.get(BUCKET_HEADER..)) {
                    (Some(0), Some(page)) => (0, Some(page)),
                    (Some(root), Some(_)) => (root, None),
                    _ => return Err(bad(id, "short bucket header")),
                };
                let nested = self.bucket(root, inline, depth + 1)?;
                out.buckets.push((key.to_vec(), nested));
            } else {
                out.entries.push((key.to_vec(), value.to_vec()));
            }
        }
        Ok(())
    }
}

/// One element to place in a page: key, value (empty in branches), leaf flags, child.
struct Item<'a> {
    key: &'a [u8],
    value: &'a [u8],
    flags: u32,
    child: u64,
}

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn alloc(&mut self, pages: usize) -> u64 {
        let id = (self.out.len() / PAGE_SIZE) as u64;
        self.out.resize(self.out.len() + pages * PAGE_SIZE, 0);
        id
    }

    fn header(&mut self, id: u64, flags: u16, count: usize, pages: usize) {
        let at = id as usize * PAGE_SIZE;
        self.out[at..at + 8].copy_from_slice(&id.to_le_bytes());
        self.out[at + 8..at + 10].copy_from_slice(&flags.to_le_bytes());
        self.out[at + 10..at + 12].copy_from_slice(&(count as u16).to_le_bytes());
        self.out[at + 12..at + 16].copy_from_slice(&((pages - 1) as u32).to_le_bytes());
    }

    /// Writes one page (with overflow pages as needed) holding `items`; returns its id.
    fn page(&mut self, items: &[Item<'_>], branch: bool) -> u64 {
        let body: usize = items.iter().map(|i| i.key.len() + i.value.len()).sum();
        let size = PAGE_HEADER + items.len() * ELEMENT + body;
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let id = self.alloc(pages);
        self.header(
            id,
            if branch { F_BRANCH } else { F_LEAF },
            items.len(),
            pages,
        );
        let base = id as usize * PAGE_SIZE;
        let mut data = PAGE_HEADER + items.len() * ELEMENT;
        for (n, item) in items.iter().enumerate() {
            let e = base + PAGE_HEADER + n * ELEMENT;
            let pos = (data - (PAGE_HEADER + n * ELEMENT)) as u32;
            let o = &mut self.out;
            if branch {
                o[e..e + 4].copy_from_slice(&pos.to_le_bytes());
                o[e + 4..e + 8].copy_from_slice(&(item.key.len() as u32).to_le_bytes());
                o[e + 8..e + 16].copy_from_slice(&item.child.to_le_bytes());
            } else {
                o[e..e + 4].copy_from_slice(&item.flags.to_le_bytes());
                o[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
                o[e + 8..e + 12].copy_from_slice(&(item.key.len() as u32).to_le_bytes());
                o[e + 12..e + 16].copy_from_slice(&(item.value.len() as u32).to_le_bytes());
            }
            let d = base + data;
            o[d..d + item.key.len()].copy_from_slice(item.key);
            let d = d + item.key.len();
            o[d..d + item.value.len()].copy_from_slice(item.value);
            data += item.key.len() + item.value.len();
        }
        id
    }

    /// Packs `items` (ascending) into pages of one level, each as full as fits in one
    /// page (an item larger than a page gets overflow pages of its own); returns each
    /// page's first key and id.
    fn level<'a>(&mut self, items: &[Item<'a>], branch: bool) -> Vec<(&'a [u8], u64)> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut size = PAGE_HEADER;
        for (i, item) in items.iter().enumerate() {
            let add = ELEMENT + item.key.len() + item.value.len();
            if i > start && (size + add > PAGE_SIZE || i - start == usize::from(u16::MAX)) {
                out.push((items[start].key, self.page(&items[start..i], branch)));
                start = i;
                size = PAGE_HEADER;
            }
            size += add;
        }
        out.push((
            items.get(start).map_or(&[][..], |i| i.key),
            self.page(&items[start..], branch),
        ));
        out
    }

    /// Writes a B+tree of `items`; returns the root page id.
    fn tree(&mut self, items: &[Item<'_>]) -> u64 {
        let mut level = self.level(items, false);
        while level.len() > 1 {
            let branches: Vec<Item<'_>> = level
                .iter()
                .map(|(key, child)| Item {
                    key,
                    value: &[],
                    flags: 0,
                    child: *child,
                })
                .collect();
            level = self.level(&branches, true);
        }
        level[0].1
    }

    fn meta(&mut self, id: u64, root: u64, high_water: u64, txid: u64) {
        self.header(id, F_META, 0, 1);
        let at = id as usize * PAGE_SIZE + PAGE_HEADER;
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&MAGIC.to_le_bytes());
        m.extend_from_slice(&VERSION.to_le_bytes());
        m.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&root.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&2u64.to_le_bytes()); // the freelist page
        m.extend_from_slice(&high_water.to_le_bytes());
        m.extend_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&m);
        m.extend_from_slice(&sum.to_le_bytes());
        self.out[at..at + m.len()].copy_from_slice(&m);
    }
}

/// Key/value pairs in ascending key order.
pub type Entries = [(Vec<u8>, Vec<u8>)];

/// Writes a database whose root bucket holds `buckets` (name, entries), each with its own
/// root page. Names and each bucket's keys must ascend (checked: unsorted input is a bug
/// of the caller, so the function sorts nothing and asserts instead).
pub fn write(buckets: &[(&[u8], &Entries)]) -> Vec<u8> {
    assert!(buckets.windows(2).all(|w| w[0].0 < w[1].0));
    let mut w = Writer { out: Vec::new() };
    w.alloc(3); // metas 0 and 1, freelist 2
    w.header(2, F_FREELIST, 0, 1);
    let mut headers = Vec::with_capacity(buckets.len());
    for (_, entries) in buckets {
        assert!(entries.windows(2).all(|p| p[0].0 < p[1].0));
        let items: Vec<Item<'_>> = entries
            .iter()
            .map(|(k, v)| Item {
                key: k,
                value: v,
                flags: 0,
                child: 0,
            })
            .collect();
        let root = w.tree(&items);
        let mut h = root.to_le_bytes().to_vec();
        h.extend_from_slice(&0u64.to_le_bytes());
        headers.push(h);
    }
    let items: Vec<Item<'_>> = buckets
        .iter()
        .zip(&headers)
        .map(|((name, _), h)| Item {
            key: name,
            value: h,
            flags: BUCKET_LEAF,
            child: 0,
        })
        .collect();
    let root = w.tree(&items);
    let high_water = (w.out.len() / PAGE_SIZE) as u64;
    // bbolt writes transaction t's meta to page t % 2; both pages describe the same tree.
    w.meta(0, root, high_water, 2);
    w.meta(1, root, high_water, 1);
    w.out
}

#[cfg(test)]
mod tests;
