//! Apache Parquet files (github.com/apache/parquet-format), read for one top-level string column:
//! what `prepro` takes from a dataset's `*.parquet` files (Hugging Face's datasets, FineWeb and
//! most others on the Hub, ship as Parquet), each row's text one document.
//!
//! A file is "PAR1", the row groups' column chunks, the footer (a Thrift compact-protocol
//! `FileMetaData`), its length (u32 LE) and "PAR1". The footer's schema names the columns; each
//! row group's `ColumnChunk` says where the chosen column's pages lie. A chunk is an optional
//! dictionary page, then data pages (v1 or v2), each a Thrift `PageHeader` and its bytes,
//! compressed with the chunk's codec (none, snappy, gzip, zstd or lz4). A data page holds the column's
//! definition levels (which rows are null, for an optional column: an RLE / bit-packed hybrid of
//! 1-bit values) and the non-null values, PLAIN (u32 LE length + bytes), dictionary indices
//! (a bit width, then an RLE / bit-packed hybrid), or DELTA_LENGTH_BYTE_ARRAY / DELTA_BYTE_ARRAY
//! (lengths, and prefixes shared with the value before, as DELTA_BINARY_PACKED integers).
//!
//! Read here: flat (top-level) BYTE_ARRAY columns, required or optional; encodings PLAIN,
//! PLAIN_DICTIONARY, RLE_DICTIONARY, DELTA_LENGTH_BYTE_ARRAY and DELTA_BYTE_ARRAY; codecs UNCOMPRESSED, SNAPPY, GZIP, ZSTD and LZ4_RAW. Anything
//! else (a nested or repeated column, another encoding or codec, a column in another file) is
//! refused with what it is. Nothing panics on a damaged file: every offset and length is checked.

use anyhow::{anyhow, bail, Context, Result};
use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Whether `path` is read as Parquet: its name ends in `.parquet`.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

const MAGIC: &[u8; 4] = b"PAR1";
/// The deepest Thrift nesting read or skipped (the structs read here are 4 deep).
const MAX_DEPTH: usize = 32;

// ---- the Thrift compact protocol -------------------------------------------------------------

/// The compact protocol's field and element types.
mod ttype {
    pub const TRUE: u8 = 1;
    pub const FALSE: u8 = 2;
    pub const BYTE: u8 = 3;
    pub const I16: u8 = 4;
    pub const I32: u8 = 5;
    pub const I64: u8 = 6;
    pub const DOUBLE: u8 = 7;
    pub const BINARY: u8 = 8;
    pub const LIST: u8 = 9;
    pub const SET: u8 = 10;
    pub const MAP: u8 = 11;
    pub const STRUCT: u8 = 12;
}

/// A reader of Thrift compact-protocol values from a byte slice.
struct Thrift<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Thrift<'a> {
    fn new(bytes: &'a [u8]) -> Thrift<'a> {
        Thrift { bytes, pos: 0 }
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| anyhow!("the metadata ends early"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                break;
            }
            value |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("a varint of more than 64 bits in the metadata")
    }

    fn zigzag(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32> {
        let v = self.zigzag()?;
        i32::try_from(v).map_err(|_| anyhow!("an i32 field of {v} in the metadata"))
    }

    fn binary(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()?;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| anyhow!("a string of {n} bytes runs past the metadata's end"))?;
        let b = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    fn string(&mut self) -> Result<String> {
        let b = self.binary()?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }

    /// A list's (or set's) header: its length and element type.
    fn list_header(&mut self) -> Result<(usize, u8)> {
        let h = self.byte()?;
        let n = match h >> 4 {
            15 => self.varint()?,
            n => n as u64,
        };
        // every element takes at least one byte: a longer list cannot be in the metadata
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= self.bytes.len() - self.pos)
            .ok_or_else(|| anyhow!("a list of {n} elements is longer than the metadata"))?;
        Ok((n, h & 0x0f))
    }

    /// Reads a struct's fields, handing each (id, type) to `field`, which reads the value and
    /// returns true, or returns false to have it skipped.
    fn read_struct(
        &mut self,
        depth: usize,
        mut field: impl FnMut(&mut Self, i16, u8) -> Result<bool>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!("the metadata nests more than {MAX_DEPTH} deep");
        }
        let mut last_id = 0i16;
        loop {
            let h = self.byte()?;
            if h == 0 {
                return Ok(());
            }
            let ty = h & 0x0f;
            let id = match h >> 4 {
                0 => i16::try_from(self.zigzag()?)
                    .map_err(|_| anyhow!("a field id out of range in the metadata"))?,
                delta => last_id.wrapping_add(delta as i16),
            };
            last_id = id;
            if !field(self, id, ty)? {
                self.skip(ty, depth + 1)?;
            }
        }
    }

    /// Reads a list of structs, each by `element`.
    fn read_list(
        &mut self,
        depth: usize,
        mut element: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<()> {
        let (n, ty) = self.list_header()?;
        if ty != ttype::STRUCT {
            bail!("a list of type {ty} where the metadata has structs");
        }
        if depth > MAX_DEPTH {
            bail!("the metadata nests more than {MAX_DEPTH} deep");
        }
        for _ in 0..n {
            element(self)?;
        }
        Ok(())
    }

    /// Skips a value of type `ty`.
    fn skip(&mut self, ty: u8, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!("the metadata nests more than {MAX_DEPTH} deep");
        }
        match ty {
            ttype::TRUE | ttype::FALSE => {}
            ttype::BYTE => {
                self.byte()?;
            }
            ttype::I16 | ttype::I32 | ttype::I64 => {
                self.varint()?;
            }
            ttype::DOUBLE => {
                if self.bytes.len() - self.pos < 8 {
                    bail!("the metadata ends early");
                }
                self.pos += 8;
            }
            ttype::BINARY => {
                self.binary()?;
            }
            ttype::LIST | ttype::SET => {
                let (n, elem) = self.list_header()?;
                for _ in 0..n {
                    // (a bool element is a byte of its own)
                    match elem {
                        ttype::TRUE | ttype::FALSE => {
                            self.byte()?;
                        }
                        _ => self.skip(elem, depth + 1)?,
                    }
                }
            }
            ttype::MAP => {
                let n = self.varint()?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n.min(self.bytes.len() as u64) {
                        self.skip(kv >> 4, depth + 1)?;
                        self.skip(kv & 0x0f, depth + 1)?;
                    }
                }
            }
            ttype::STRUCT => self.read_struct(depth + 1, |_, _, _| Ok(false))?,
            _ => bail!("an unknown Thrift type {ty} in the metadata"),
        }
        Ok(())
    }

    /// An i32 field's value, an error where the field has another type.
    fn i32_field(&mut self, ty: u8, name: &str) -> Result<i32> {
        if ty != ttype::I32 {
            bail!("{name} is of Thrift type {ty}, not i32");
        }
        self.i32()
    }

    /// An i64 field's value, an error where the field has another type.
    fn i64_field(&mut self, ty: u8, name: &str) -> Result<i64> {
        if ty != ttype::I64 {
            bail!("{name} is of Thrift type {ty}, not i64");
        }
        self.zigzag()
    }
}

// ---- the footer --------------------------------------------------------------------------------

/// A schema element: a leaf column (no children) or a group.
#[derive(Debug, Default)]
struct SchemaElement {
    name: String,
    /// Physical type (leaves): 6 is BYTE_ARRAY.
    ty: Option<i32>,
    /// 0 required, 1 optional, 2 repeated.
    repetition: Option<i32>,
    num_children: usize,
}

/// Where one column's chunk lies in a row group, and how it is stored.
#[derive(Debug, Default)]
struct ColumnChunk {
    /// Set when the chunk lies in another file (not read here).
    file_path: Option<String>,
    codec: i32,
    num_values: i64,
    total_compressed_size: i64,
    data_page_offset: i64,
    dictionary_page_offset: Option<i64>,
    path: Vec<String>,
}

impl ColumnChunk {
    /// Where the chunk's pages begin: its dictionary page where it has one, before the data
    /// pages; else its first data page. A dictionary offset of 0 (the file's magic number, never
    /// a page) or one at or after the data pages is not a dictionary page's.
    fn first_page_offset(&self) -> i64 {
        match self.dictionary_page_offset {
            Some(d) if d > 0 && d < self.data_page_offset => d,
            _ => self.data_page_offset,
        }
    }
}

#[derive(Debug)]
struct FileMetaData {
    schema: Vec<SchemaElement>,
    num_rows: i64,
    /// Each row group's column chunks and its rows.
    row_groups: Vec<(Vec<ColumnChunk>, i64)>,
}

fn read_schema_element(t: &mut Thrift, depth: usize) -> Result<SchemaElement> {
    let mut e = SchemaElement::default();
    t.read_struct(depth, |t, id, ty| {
        match id {
            1 => e.ty = Some(t.i32_field(ty, "a schema element's type")?),
            3 => e.repetition = Some(t.i32_field(ty, "a schema element's repetition")?),
            4 if ty == ttype::BINARY => e.name = t.string()?,
            5 => {
                let n = t.i32_field(ty, "a schema element's num_children")?;
                e.num_children =
                    usize::try_from(n).map_err(|_| anyhow!("a group of {n} children"))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(e)
}

fn read_column_meta(t: &mut Thrift, c: &mut ColumnChunk, depth: usize) -> Result<()> {
    t.read_struct(depth, |t, id, ty| {
        match id {
            3 if ty == ttype::LIST => {
                let (n, elem) = t.list_header()?;
                if elem != ttype::BINARY {
                    bail!("a column path of Thrift type {elem}");
                }
                for _ in 0..n {
                    c.path.push(t.string()?);
                }
            }
            4 => c.codec = t.i32_field(ty, "a column's codec")?,
            5 => c.num_values = t.i64_field(ty, "a column's num_values")?,
            7 => c.total_compressed_size = t.i64_field(ty, "a column's total_compressed_size")?,
            9 => c.data_page_offset = t.i64_field(ty, "a column's data_page_offset")?,
            11 => {
                c.dictionary_page_offset =
                    Some(t.i64_field(ty, "a column's dictionary_page_offset")?)
            }
            _ => return Ok(false),
        }
        Ok(true)
    })
}

fn read_file_metadata(bytes: &[u8]) -> Result<FileMetaData> {
    let mut t = Thrift::new(bytes);
    let mut schema = Vec::new();
    let mut num_rows = 0;
    let mut row_groups = Vec::new();
    t.read_struct(0, |t, id, ty| {
        match id {
            2 if ty == ttype::LIST => {
                t.read_list(1, |t| {
                    schema.push(read_schema_element(t, 2)?);
                    Ok(())
                })?;
            }
            3 => num_rows = t.i64_field(ty, "the file's num_rows")?,
            4 if ty == ttype::LIST => {
                t.read_list(1, |t| {
                    let mut columns = Vec::new();
                    let mut rows = 0;
                    t.read_struct(2, |t, id, ty| {
                        match id {
                            1 if ty == ttype::LIST => t.read_list(3, |t| {
                                let mut c = ColumnChunk::default();
                                t.read_struct(4, |t, id, ty| {
                                    match id {
                                        1 if ty == ttype::BINARY => c.file_path = Some(t.string()?),
                                        3 if ty == ttype::STRUCT => read_column_meta(t, &mut c, 5)?,
                                        _ => return Ok(false),
                                    }
                                    Ok(true)
                                })?;
                                columns.push(c);
                                Ok(())
                            })?,
                            3 => rows = t.i64_field(ty, "a row group's num_rows")?,
                            _ => return Ok(false),
                        }
                        Ok(true)
                    })?;
                    row_groups.push((columns, rows));
                    Ok(())
                })?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(FileMetaData {
        schema,
        num_rows,
        row_groups,
    })
}

/// The leaf index of top-level column `field` and whether it is optional, from the schema (its
/// first element the root, the rest its descendants depth first); an error naming the columns
/// there are when there is none of that name, or when it is not a flat string column.
fn find_column(schema: &[SchemaElement], field: &str) -> Result<(usize, bool)> {
    let Some(root) = schema.first() else {
        bail!("the schema is empty");
    };
    let mut names = Vec::new();
    // (element index, leaves before it) of each top-level field
    let (mut at, mut leaves) = (1usize, 0usize);
    for _ in 0..root.num_children {
        let Some(e) = schema.get(at) else {
            bail!("the schema has fewer elements than its groups' children");
        };
        // the subtree's elements and leaves
        let (mut end, mut sub_leaves, mut open) = (at, 0usize, 1usize);
        while open > 0 {
            let Some(x) = schema.get(end) else {
                bail!("the schema has fewer elements than its groups' children");
            };
            open = open - 1 + x.num_children;
            if x.num_children == 0 {
                sub_leaves += 1;
            }
            end += 1;
        }
        if e.name == field {
            if e.num_children > 0 {
                bail!(
                    "column '{field}' is a group of {}, not a string: prepro reads a top-level \
                     string column (--text-field)",
                    crate::text::count(e.num_children, "field", "fields")
                );
            }
            if e.ty != Some(6) {
                bail!(
                    "column '{field}' is of Parquet type {} (not BYTE_ARRAY, a string)",
                    physical_type_name(e.ty)
                );
            }
            let optional = match e.repetition {
                Some(0) => false,
                Some(1) | None => true,
                _ => {
                    bail!("column '{field}' is repeated (a list): prepro reads one string per row")
                }
            };
            return Ok((leaves, optional));
        }
        names.push(e.name.clone());
        leaves += sub_leaves;
        at = end;
    }
    bail!(
        "no column '{field}' (the file has {}): name the text column with --text-field",
        names
            .iter()
            .map(|n| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn physical_type_name(ty: Option<i32>) -> String {
    match ty {
        Some(0) => "BOOLEAN".into(),
        Some(1) => "INT32".into(),
        Some(2) => "INT64".into(),
        Some(3) => "INT96".into(),
        Some(4) => "FLOAT".into(),
        Some(5) => "DOUBLE".into(),
        Some(7) => "FIXED_LEN_BYTE_ARRAY".into(),
        Some(t) => format!("{t}"),
        None => "unknown".into(),
    }
}

// ---- pages -----------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct PageHeader {
    ty: i32,
    uncompressed_size: i32,
    compressed_size: i32,
    /// Values (nulls included), encoding; v2: nulls, levels' byte lengths, whether compressed.
    num_values: i32,
    encoding: i32,
    num_nulls: i32,
    def_levels_len: i32,
    rep_levels_len: i32,
    compressed: bool,
}

const DATA_PAGE: i32 = 0;
const DICTIONARY_PAGE: i32 = 2;
const DATA_PAGE_V2: i32 = 3;

fn read_page_header(t: &mut Thrift) -> Result<PageHeader> {
    let mut h = PageHeader {
        compressed: true,
        ..Default::default()
    };
    t.read_struct(0, |t, id, ty| {
        match id {
            1 => h.ty = t.i32_field(ty, "a page's type")?,
            2 => h.uncompressed_size = t.i32_field(ty, "a page's uncompressed size")?,
            3 => h.compressed_size = t.i32_field(ty, "a page's compressed size")?,
            // data page v1, dictionary page: num_values, encoding
            5 | 7 if ty == ttype::STRUCT => t.read_struct(1, |t, id, ty| {
                match id {
                    1 => h.num_values = t.i32_field(ty, "a page's num_values")?,
                    2 => h.encoding = t.i32_field(ty, "a page's encoding")?,
                    _ => return Ok(false),
                }
                Ok(true)
            })?,
            8 if ty == ttype::STRUCT => t.read_struct(1, |t, id, ty| {
                match id {
                    1 => h.num_values = t.i32_field(ty, "a page's num_values")?,
                    2 => h.num_nulls = t.i32_field(ty, "a page's num_nulls")?,
                    4 => h.encoding = t.i32_field(ty, "a page's encoding")?,
                    5 => h.def_levels_len = t.i32_field(ty, "a page's definition levels")?,
                    6 => h.rep_levels_len = t.i32_field(ty, "a page's repetition levels")?,
                    7 => h.compressed = ty == ttype::TRUE,
                    _ => return Ok(false),
                }
                Ok(true)
            })?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok(h)
}

/// `data` decompressed by the chunk's `codec` into `size` bytes (uncompressed: `data` itself).
fn decompress(codec: i32, data: &[u8], size: usize) -> Result<Cow<'_, [u8]>> {
    let out = match codec {
        0 => Cow::Borrowed(data),
        1 => Cow::Owned(super::snappy::decompress(data)?),
        2 => Cow::Owned(read_page(super::gzip::GzReader::new(data), size).context("gzip")?),
        6 => Cow::Owned(read_page(super::zstd::ZstdReader::new(data), size).context("zstd")?),
        3 => bail!("the LZO codec is not read here (recompress with snappy, gzip, zstd or lz4)"),
        4 => bail!("the BROTLI codec is not read here (recompress with snappy, gzip, zstd or lz4)"),
        7 => Cow::Owned(super::lz4::decompress(data, size)?),
        5 => bail!(
            "the LZ4 codec with Hadoop's framing (deprecated) is not read here (recompress with \
             lz4 (LZ4_RAW), snappy, gzip or zstd)"
        ),
        c => bail!("an unknown codec {c}"),
    };
    if out.len() != size {
        bail!(
            "a page decompresses to {} bytes, its header says {size}",
            out.len()
        );
    }
    Ok(out)
}

/// A page's bytes from a decompressing reader: at most `size` + 1 (one more than the header says
/// is enough to see that it holds too many).
fn read_page(reader: impl Read, size: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(size.min(super::MAX_RESERVE));
    reader.take(size as u64 + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// Values of `bit_width` bits (at most 32) from an RLE / bit-packed hybrid run sequence in
/// `bytes`, `count` of them, appended to `out`.
fn read_hybrid(bytes: &[u8], bit_width: u32, count: usize, out: &mut Vec<u32>) -> Result<()> {
    if bit_width > 32 {
        bail!("a bit width of {bit_width}");
    }
    let mut t = Thrift::new(bytes);
    let want = out.len() + count;
    let mask = if bit_width == 32 {
        u32::MAX
    } else {
        (1u32 << bit_width) - 1
    };
    while out.len() < want {
        let header = t.varint().context("levels or indices")?;
        if header & 1 == 0 {
            // a run of one value, in ceil(bit_width / 8) bytes
            let n = (header >> 1) as usize;
            let width = bit_width.div_ceil(8) as usize;
            let Some(b) = bytes.get(t.pos..t.pos + width) else {
                bail!("a run of levels or indices ends early");
            };
            t.pos += width;
            let v = b.iter().rev().fold(0u32, |acc, &x| acc << 8 | x as u32);
            if v > mask {
                bail!("a run of value {v}, wider than its {bit_width} bits");
            }
            let n = n.min(want - out.len());
            out.extend(std::iter::repeat_n(v, n));
        } else {
            // groups of 8 values, bit-packed least significant bit first
            let groups = (header >> 1) as usize;
            let nbytes = groups.saturating_mul(bit_width as usize);
            let Some(b) = bytes.get(t.pos..t.pos.saturating_add(nbytes)) else {
                bail!("bit-packed levels or indices end early");
            };
            t.pos += nbytes;
            let n = groups.saturating_mul(8).min(want - out.len());
            for i in 0..n {
                let bit = i * bit_width as usize;
                // the (up to 5) bytes holding this value's bits
                let mut word = 0u64;
                for (k, &x) in b[bit / 8..].iter().take(5).enumerate() {
                    word |= (x as u64) << (8 * k);
                }
                out.push((word >> (bit % 8)) as u32 & mask);
            }
        }
    }
    Ok(())
}

/// One column's values, page by page: a dictionary, then each page's rows.
struct ColumnReader<'a> {
    field: &'a str,
    optional: bool,
    dictionary: Vec<String>,
    /// The null rows handed on so far.
    nulls: u64,
}

impl ColumnReader<'_> {
    /// Decodes the pages of one column chunk (`chunk`, `codec`), handing each row's value to
    /// `on_row` (None: null); returns the values read.
    fn read_chunk(
        &mut self,
        chunk: &[u8],
        codec: i32,
        on_row: &mut dyn FnMut(Option<&str>) -> Result<()>,
    ) -> Result<u64> {
        let mut t = Thrift::new(chunk);
        let mut values = 0u64;
        self.dictionary.clear();
        while t.pos < chunk.len() {
            let h = read_page_header(&mut t)?;
            let (Ok(csize), Ok(usize_)) = (
                usize::try_from(h.compressed_size),
                usize::try_from(h.uncompressed_size),
            ) else {
                bail!("a page of negative size");
            };
            let Some(body) = chunk.get(t.pos..t.pos.saturating_add(csize)) else {
                bail!(
                    "a page of {csize} bytes runs past its column chunk's end (the file is \
                     truncated or damaged)"
                );
            };
            t.pos += csize;
            let n =
                usize::try_from(h.num_values).map_err(|_| anyhow!("a page of negative values"))?;
            match h.ty {
                DICTIONARY_PAGE => {
                    if !matches!(h.encoding, 0 | 2) {
                        bail!("a dictionary of encoding {}", encoding_name(h.encoding));
                    }
                    let page = decompress(codec, body, usize_)?;
                    self.dictionary = plain_strings(&page, n)?
                        .into_iter()
                        .map(str::to_owned)
                        .collect();
                    // (its values are the dictionary's, not the column's)
                    continue;
                }
                DATA_PAGE => {
                    let page = decompress(codec, body, usize_)?;
                    let mut levels = Vec::new();
                    let mut at = 0;
                    if self.optional {
                        let Some(len) = page.get(..4) else {
                            bail!("a data page ends before its definition levels");
                        };
                        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                        let Some(b) = page.get(4..4usize.saturating_add(len)) else {
                            bail!("a data page's definition levels run past its end");
                        };
                        read_hybrid(b, 1, n, &mut levels)?;
                        at = 4 + len;
                    }
                    self.nulls += self.emit_rows(&page[at..], h.encoding, n, &levels, on_row)?;
                }
                DATA_PAGE_V2 => {
                    let (Ok(dl), Ok(rl)) = (
                        usize::try_from(h.def_levels_len),
                        usize::try_from(h.rep_levels_len),
                    ) else {
                        bail!("a data page's levels of negative length");
                    };
                    let Some(levels_bytes) = body.get(rl..rl.saturating_add(dl)) else {
                        bail!("a data page's levels run past its end");
                    };
                    let mut levels = Vec::new();
                    if self.optional {
                        read_hybrid(levels_bytes, 1, n, &mut levels)?;
                    }
                    let rest = &body[rl + dl..];
                    let values_size = usize_
                        .checked_sub(rl + dl)
                        .ok_or_else(|| anyhow!("a data page's levels are longer than the page"))?;
                    let page = if h.compressed {
                        decompress(codec, rest, values_size)?
                    } else {
                        Cow::Borrowed(rest)
                    };
                    if !self.optional && h.num_nulls != 0 {
                        bail!("a required column with {} nulls", h.num_nulls);
                    }
                    self.nulls += self.emit_rows(&page, h.encoding, n, &levels, on_row)?;
                }
                // index pages and others: skipped
                _ => continue,
            }
            values += n as u64;
        }
        Ok(values)
    }

    /// Hands `n` rows of a data page to `on_row`: `levels` (empty for a required column) say
    /// which are null; `values` holds the others, encoded by `encoding`. Returns the nulls.
    fn emit_rows(
        &self,
        values: &[u8],
        encoding: i32,
        n: usize,
        levels: &[u32],
        on_row: &mut dyn FnMut(Option<&str>) -> Result<()>,
    ) -> Result<u64> {
        let present = if self.optional {
            levels.iter().filter(|&&l| l == 1).count()
        } else {
            n
        };
        let owned: Vec<String>;
        let strings: Vec<&str> = match encoding {
            0 => plain_strings(values, present)?,
            6 | 7 => {
                owned = delta_strings(values, present, encoding == 7)?;
                owned.iter().map(String::as_str).collect()
            }
            2 | 8 => {
                let Some((&width, rest)) = values.split_first() else {
                    bail!("a data page without its dictionary indices");
                };
                let mut idx = Vec::with_capacity(present.min(values.len() * 8));
                read_hybrid(rest, width as u32, present, &mut idx)?;
                idx.iter()
                    .map(|&i| {
                        self.dictionary
                            .get(i as usize)
                            .map(String::as_str)
                            .ok_or_else(|| {
                                anyhow!(
                                    "a dictionary index {i} past the dictionary's {} values",
                                    self.dictionary.len()
                                )
                            })
                    })
                    .collect::<Result<_>>()?
            }
            e => bail!(
                "column '{}' is stored with the {} encoding, not read here (PLAIN, dictionary and \
                 DELTA_* encodings are)",
                self.field,
                encoding_name(e)
            ),
        };
        if !self.optional {
            strings.into_iter().try_for_each(|s| on_row(Some(s)))?;
            return Ok(0);
        }
        let mut next = strings.into_iter();
        for &level in levels {
            let value = (level == 1).then(|| next.next().expect("one value per present row"));
            on_row(value)?;
        }
        Ok((n - present) as u64)
    }
}

fn encoding_name(e: i32) -> String {
    match e {
        0 => "PLAIN".into(),
        2 => "PLAIN_DICTIONARY".into(),
        3 => "RLE".into(),
        4 => "BIT_PACKED".into(),
        5 => "DELTA_BINARY_PACKED".into(),
        6 => "DELTA_LENGTH_BYTE_ARRAY".into(),
        7 => "DELTA_BYTE_ARRAY".into(),
        8 => "RLE_DICTIONARY".into(),
        9 => "BYTE_STREAM_SPLIT".into(),
        e => format!("unknown ({e})"),
    }
}

/// `n` integers of DELTA_BINARY_PACKED at the start of `bytes`, and the bytes it takes. Its
/// header: values a block, miniblocks a block, the total count and the first value (varints, the
/// last zigzag); then blocks: the least delta (zigzag), a bit width per miniblock, and the
/// miniblocks, each `values a block / miniblocks` deltas above the least, bit-packed least
/// significant bit first. The miniblocks of the last block after its last value are not stored.
fn delta_binary_packed(bytes: &[u8], n: usize) -> Result<(Vec<i64>, usize)> {
    let mut t = Thrift::new(bytes);
    let block = t.varint()?;
    let miniblocks = t.varint()?;
    let total = t.varint()?;
    let first = t.zigzag()?;
    if block == 0 || miniblocks == 0 || !block.is_multiple_of(miniblocks) || block > 1 << 20 {
        bail!("DELTA_BINARY_PACKED blocks of {block} values in {miniblocks} miniblocks");
    }
    let per_mini = (block / miniblocks) as usize;
    if !per_mini.is_multiple_of(8) {
        bail!("DELTA_BINARY_PACKED miniblocks of {per_mini} values, not a multiple of 8");
    }
    if total != n as u64 {
        bail!("DELTA_BINARY_PACKED of {total} values where {n} are wanted");
    }
    let mut out = Vec::with_capacity(n.min(bytes.len() * 8 + 1));
    if n == 0 {
        return Ok((out, t.pos));
    }
    out.push(first);
    let mut last = first;
    while out.len() < n {
        let min_delta = t.zigzag()?;
        let widths_at = t.pos;
        let Some(widths) = bytes.get(widths_at..widths_at + miniblocks as usize) else {
            bail!("DELTA_BINARY_PACKED bit widths run past the page's end");
        };
        t.pos += miniblocks as usize;
        for &width in widths {
            if out.len() == n {
                break;
            }
            if width > 64 {
                bail!("DELTA_BINARY_PACKED bit width {width}");
            }
            let nbytes = per_mini * width as usize / 8;
            let Some(mini) = bytes.get(t.pos..t.pos + nbytes) else {
                bail!("a DELTA_BINARY_PACKED miniblock runs past the page's end");
            };
            t.pos += nbytes;
            for i in 0..per_mini.min(n - out.len()) {
                let bit = i * width as usize;
                let mut v = 0u64;
                for k in 0..width as usize {
                    let b = bit + k;
                    v |= (((mini[b / 8] >> (b % 8)) & 1) as u64) << k;
                }
                last = last.wrapping_add(min_delta).wrapping_add(v as i64);
                out.push(last);
            }
        }
    }
    Ok((out, t.pos))
}

/// `n` DELTA_LENGTH_BYTE_ARRAY values (their lengths DELTA_BINARY_PACKED, then their bytes one
/// after another) or, with `prefixed`, DELTA_BYTE_ARRAY values (each value's length of prefix
/// shared with the one before, DELTA_BINARY_PACKED, then the suffixes as DELTA_LENGTH_BYTE_ARRAY),
/// each UTF-8.
fn delta_strings(bytes: &[u8], n: usize, prefixed: bool) -> Result<Vec<String>> {
    // (without prefixes none are stored: a vector of n zeros would be a page's claimed count of
    // values in memory before its bytes are seen to hold them)
    let (prefixes, at) = if prefixed {
        delta_binary_packed(bytes, n)?
    } else {
        (Vec::new(), 0)
    };
    let (lengths, used) = delta_binary_packed(&bytes[at..], n)?;
    let mut pos = at + used;
    let mut out: Vec<String> = Vec::with_capacity(n.min(bytes.len()));
    let mut value: Vec<u8> = Vec::new();
    for (i, &len) in lengths.iter().enumerate() {
        let prefix = prefixes.get(i).copied().unwrap_or(0);
        let (Ok(prefix), Ok(len)) = (usize::try_from(prefix), usize::try_from(len)) else {
            bail!("value {i} of a page has a negative length");
        };
        if prefix > value.len() {
            bail!(
                "value {i} of a page shares {prefix} bytes with one of {}",
                value.len()
            );
        }
        let Some(suffix) = bytes.get(pos..pos.saturating_add(len)) else {
            bail!("value {i} of a page ({len} bytes) runs past the page's end");
        };
        pos += len;
        value.truncate(prefix);
        value.extend_from_slice(suffix);
        out.push(String::from_utf8(value.clone()).map_err(|e| {
            anyhow!(
                "a value that is not UTF-8 text (invalid byte at its offset {})",
                e.utf8_error().valid_up_to()
            )
        })?);
    }
    Ok(out)
}

/// `n` PLAIN BYTE_ARRAY values (u32 LE length, bytes), each UTF-8.
fn plain_strings(bytes: &[u8], n: usize) -> Result<Vec<&str>> {
    let mut out = Vec::with_capacity(n.min(bytes.len() / 4));
    let mut pos = 0usize;
    for i in 0..n {
        let Some(len) = bytes.get(pos..pos + 4) else {
            bail!("a page ends after {i} of its {n} values");
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let Some(s) = bytes.get(pos + 4..(pos + 4).saturating_add(len)) else {
            bail!("value {i} of a page ({len} bytes) runs past the page's end");
        };
        pos += 4 + len;
        out.push(std::str::from_utf8(s).map_err(|e| {
            anyhow!(
                "a value that is not UTF-8 text (invalid byte at its offset {})",
                e.valid_up_to()
            )
        })?);
    }
    Ok(out)
}

// ---- the file ----------------------------------------------------------------------------------

/// What [`read_text_column`] read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColumnSummary {
    pub rows: u64,
    pub nulls: u64,
    pub row_groups: usize,
}

/// Reads top-level string column `field` of the Parquet file at `path`, handing each row's value
/// to `on_row` in the file's order (None: a null), one row group's column chunk in memory at a
/// time. Every error names the file (and the row group).
pub fn read_text_column(
    path: &Path,
    field: &str,
    mut on_row: impl FnMut(Option<&str>) -> Result<()>,
) -> Result<ColumnSummary> {
    let what = path.display();
    let mut file = std::fs::File::open(path).with_context(|| format!("{what}: cannot read"))?;
    let size = file
        .metadata()
        .with_context(|| format!("{what}: cannot read"))?
        .len();
    let read_at = |file: &mut std::fs::File, offset: u64, len: usize| -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut buf)?;
        Ok(buf)
    };
    let head = read_at(&mut file, 0, size.min(4) as usize)
        .with_context(|| format!("{what}: cannot read"))?;
    // (a file that starts as Parquet does, but lacks its end, was cut short or damaged: it is
    // not named as something else)
    let starts = head == MAGIC;
    if size < 12 {
        if starts {
            bail!(
                "{what}: truncated: {size} bytes, starting with PAR1 as a Parquet file does but \
                 shorter than its magic and footer"
            );
        }
        bail!("{what}: not a Parquet file ({size} bytes, shorter than its magic and footer)");
    }
    let tail = read_at(&mut file, size - 8, 8).with_context(|| format!("{what}: cannot read"))?;
    if !starts {
        bail!("{what}: not a Parquet file (no PAR1 magic at its start)");
    }
    if &tail[4..] != MAGIC {
        bail!(
            "{what}: truncated or damaged: it starts with PAR1 as a Parquet file does, but does \
             not end with it ({size} bytes): copy or download it again"
        );
    }
    let footer_len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as u64;
    if footer_len + 12 > size {
        bail!("{what}: a footer of {footer_len} bytes in a file of {size}: truncated or damaged");
    }
    let footer = read_at(&mut file, size - 8 - footer_len, footer_len as usize)
        .with_context(|| format!("{what}: cannot read"))?;
    let meta = read_file_metadata(&footer).with_context(|| format!("{what}: bad footer"))?;
    let (column, optional) = find_column(&meta.schema, field).with_context(|| format!("{what}"))?;
    let mut reader = ColumnReader {
        field,
        optional,
        dictionary: Vec::new(),
        nulls: 0,
    };
    // (a flat column's values are its rows, nulls included)
    let mut rows_read = 0u64;
    for (g, (columns, rows)) in meta.row_groups.iter().enumerate() {
        let ctx = || format!("{what}: row group {g}, column '{field}'");
        let Some(c) = columns.get(column) else {
            bail!("{}: the row group has {} columns", ctx(), columns.len());
        };
        if let Some(p) = &c.file_path {
            bail!(
                "{}: the column's data is in another file ({p}), not read here",
                ctx()
            );
        }
        if c.path.len() != 1 || c.path[0] != field {
            bail!(
                "{}: the chunk is of column {:?}: the footer is damaged",
                ctx(),
                c.path
            );
        }
        let start = c.first_page_offset();
        let (Ok(start), Ok(len)) = (u64::try_from(start), u64::try_from(c.total_compressed_size))
        else {
            bail!(
                "{}: a negative offset or size: the footer is damaged",
                ctx()
            );
        };
        if start
            .checked_add(len)
            .is_none_or(|end| end > size - 8 - footer_len)
        {
            bail!(
                "{}: the chunk ({len} bytes at {start}) runs past the data: truncated or damaged",
                ctx()
            );
        }
        let chunk = read_at(&mut file, start, len as usize).with_context(ctx)?;
        let values = reader
            .read_chunk(&chunk, c.codec, &mut on_row)
            .with_context(ctx)?;
        rows_read += values;
        if values != c.num_values as u64 || values != *rows as u64 {
            bail!(
                "{}: {values} values in the pages, the footer says {} values in {rows} rows",
                ctx(),
                c.num_values
            );
        }
    }
    if rows_read != meta.num_rows as u64 {
        bail!(
            "{what}: {rows_read} rows in the row groups, the footer says {}",
            meta.num_rows
        );
    }
    Ok(ColumnSummary {
        rows: rows_read,
        nulls: reader.nulls,
        row_groups: meta.row_groups.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_runs_and_bit_packing() {
        // an RLE run of 3 ones (header 3 << 1 = 6, value byte 1), then one bit-packed group of 8
        // 1-bit values (header 1 << 1 | 1 = 3): 0b10110010 -> 0,1,0,0,1,1,0,1
        let mut out = Vec::new();
        read_hybrid(&[6, 1, 3, 0b1011_0010], 1, 11, &mut out).unwrap();
        assert_eq!(out, [1, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1]);
        // the same wanting 6, after a value already there: a group's padding is not taken
        let mut out = vec![9];
        read_hybrid(&[6, 1, 3, 0b1011_0010], 1, 6, &mut out).unwrap();
        assert_eq!(out, [9, 1, 1, 1, 0, 1, 0]);
        // 3-bit values 0..8 bit-packed: 3 bytes
        let mut out = Vec::new();
        read_hybrid(&[3, 0b1000_1000, 0b1100_0110, 0b1111_1010], 3, 8, &mut out).unwrap();
        assert_eq!(out, [0, 1, 2, 3, 4, 5, 6, 7]);
        // a run with a 2-byte value (bit width 9): 300 five times
        let mut out = Vec::new();
        read_hybrid(&[10, 0x2c, 0x01], 9, 5, &mut out).unwrap();
        assert_eq!(out, [300; 5]);
        assert!(read_hybrid(&[6], 1, 3, &mut Vec::new()).is_err());
        assert!(
            read_hybrid(&[6, 2], 1, 3, &mut Vec::new()).is_err(),
            "2 in 1 bit"
        );
        assert!(read_hybrid(&[3], 1, 8, &mut Vec::new()).is_err());
    }

    #[test]
    fn delta_binary_packed_as_the_spec_describes() {
        // the spec's example 1: 1, 2, 3, 4, 5 -> deltas 1, 1, 1, 1: least delta 1, all 0 above
        // it. Header: block 128, 4 miniblocks, 5 values, first 1 (zigzag 2); block: least delta 1
        // (zigzag 2), widths 0, 0, 0, 0, no miniblock bytes
        let bytes = [0x80, 0x01, 4, 5, 2, 2, 0, 0, 0, 0];
        let (v, used) = delta_binary_packed(&bytes, 5).unwrap();
        assert_eq!((v, used), (vec![1, 2, 3, 4, 5], bytes.len()));
        // the same in one miniblock of 128 values a block (one bit width)
        let bytes = [0x80, 0x01, 1, 5, 2, 2, 0];
        let (v, used) = delta_binary_packed(&bytes, 5).unwrap();
        assert_eq!((v, used), (vec![1, 2, 3, 4, 5], bytes.len()));
        // example 2: 7, 5, 3, 1, 2, 3, 4, 5 -> deltas -2 -2 -2 1 1 1 1, least -2, above it
        // 0 0 0 3 3 3 3 in 2 bits: one miniblock of 32 values, 8 bytes (0b11000000, 0b11111111)
        let mut bytes = vec![0x80, 0x01, 4, 8, 14, 3, 2, 0, 0, 0];
        bytes.extend([0b1100_0000, 0b0011_1111, 0, 0, 0, 0, 0, 0]);
        let (v, used) = delta_binary_packed(&bytes, 8).unwrap();
        assert_eq!((v, used), (vec![7, 5, 3, 1, 2, 3, 4, 5], bytes.len()));
        assert!(
            delta_binary_packed(&bytes[..12], 8).is_err(),
            "a miniblock cut short"
        );
        assert!(
            delta_binary_packed(&bytes, 9).is_err(),
            "8 values where 9 are wanted"
        );
        // DELTA_LENGTH_BYTE_ARRAY "ab", "", "cde": lengths 2, 0, 3 (deltas -2, 3: least -2,
        // above it 0 and 5 in 3 bits)
        let mut bytes = vec![0x80, 0x01, 4, 3, 4, 3, 3, 0, 0, 0];
        bytes.extend([0b0010_1000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        bytes.extend(b"abcde");
        assert_eq!(delta_strings(&bytes, 3, false).unwrap(), ["ab", "", "cde"]);
        // a page that claims more values than any memory holds, in a few bytes: refused by its
        // bytes, before anything of the claimed count is allocated
        let err = delta_strings(&bytes, usize::MAX / 4, false).unwrap_err();
        assert!(err.to_string().contains("values where"), "{err}");
    }

    /// A chunk's pages begin at its dictionary page only where the offset can be one: after the
    /// magic number and before the data pages.
    #[test]
    fn a_chunk_begins_at_its_dictionary_page_only_where_it_can_be_one() {
        let chunk = |dictionary_page_offset| ColumnChunk {
            file_path: None,
            codec: 0,
            num_values: 1,
            total_compressed_size: 10,
            data_page_offset: 100,
            dictionary_page_offset,
            path: vec!["text".into()],
        };
        for (dictionary, want) in [
            (None, 100),
            (Some(4), 4),
            (Some(99), 99),
            (Some(0), 100),
            (Some(100), 100),
            (Some(150), 100),
        ] {
            assert_eq!(
                chunk(dictionary).first_page_offset(),
                want,
                "{dictionary:?}"
            );
        }
    }

    /// Each codec that is not read is refused by its name and what to do instead, not as an
    /// unknown number; an uncompressed page whose size is not its header's is refused too.
    #[test]
    fn codecs_not_read_are_named() {
        for (codec, want) in [
            (3, "the LZO codec is not read here"),
            (4, "the BROTLI codec is not read here"),
            (5, "codec with Hadoop's framing (deprecated) is not read"),
            (8, "an unknown codec 8"),
            (-1, "an unknown codec -1"),
        ] {
            let err = decompress(codec, b"abc", 3).unwrap_err().to_string();
            assert!(err.contains(want), "codec {codec}: {err}");
        }
        assert_eq!(&*decompress(0, b"abc", 3).unwrap(), b"abc");
        let err = decompress(0, b"abc", 4).unwrap_err().to_string();
        assert!(
            err.contains("a page decompresses to 3 bytes, its header says 4"),
            "{err}"
        );
    }

    #[test]
    fn thrift_structs_and_skipping() {
        // struct { 1: i32 = -3, 2: binary "ab", 4: list<i64> [1, 2], 5: struct { 1: bool true },
        // 6: byte -128, 7: i16 200, 21 (long form): double } then stop; field 1 read, the rest
        // skipped
        let bytes = [
            0x15, 0x05, // field 1 (delta 1), i32, zigzag(-3) = 5
            0x18, 0x02, b'a', b'b', // field 2, binary of 2
            0x29, 0x26, 0x02, 0x04, // field 4 (delta 2), list of 2 i64: 1, 2
            0x1c, 0x11, 0x00, // field 5, struct { field 1 true }
            0x13, 0x80, // field 6, byte: one raw byte (as a varint 0x80 would go on)
            0x14, 0x90, 0x03, // field 7, i16, zigzag(200) = 400 in a varint of 2
            0x07, 0x2a, 0, 0, 0, 0, 0, 0, 0, 0, // field 21 in long form: a double
            0x00,
        ];
        let mut t = Thrift::new(&bytes);
        let mut got = None;
        t.read_struct(0, |t, id, ty| {
            if id == 1 {
                got = Some(t.i32_field(ty, "x")?);
                return Ok(true);
            }
            Ok(false)
        })
        .unwrap();
        assert_eq!(got, Some(-3));
        assert_eq!(t.pos, bytes.len());
        // a list of 15 or more elements has its length in a varint after the header (size
        // nibble 15): 16 i32s
        let mut long = vec![0xf5, 16];
        long.extend(1..=16u8);
        assert_eq!(Thrift::new(&long).list_header().unwrap(), (16, 5));
        // a list of 14: the length in the header's nibble
        assert_eq!(Thrift::new(&[0xe5; 15]).list_header().unwrap(), (14, 5));
        // cut short anywhere: an error, not a panic
        for n in 0..bytes.len() {
            let mut t = Thrift::new(&bytes[..n]);
            assert!(t.read_struct(0, |_, _, _| Ok(false)).is_err(), "{n}");
        }
    }
}
