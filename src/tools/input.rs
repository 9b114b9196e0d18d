//! What the importer reads, row by row: NumPy arrays (uint8 or float32, N x
//! length) with an optional CSV or JSON-lines file of `external_id` /
//! `user_data` per row; JSON lines of LUNA-shaped faces (the body of
//! `POST /1/faces`); SDK descriptor files (`dp\0\0`, u32 LE version, payload;
//! one per file or concatenated). A file's kind is read from its first bytes.
//!
//! Rows are numbered from 1 within their file (for JSON lines: the line
//! number). Every row gets a global index, the journal's key.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use luna_core::api::DescriptorInput;
use luna_core::descriptor::{Dtype, Versions, DEFAULT_FLOAT_VERSION, SDK_MAGIC};
use luna_core::ErrorCode;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// One face as the importer sends it.
#[derive(Debug, Clone)]
pub struct Face {
    /// The descriptor's bytes: a raw payload or an SDK container.
    pub data: Vec<u8>,
    /// `descriptor.version`; None: the service's default for raw payloads.
    pub version: Option<u32>,
    pub account_id: Option<Uuid>,
    pub external_id: Option<String>,
    pub user_data: String,
    pub lists: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub index: u64,
    pub file: usize,
    pub row: u64,
    pub face: Face,
}

/// What a source yields: a row, or a row that cannot be read.
pub enum Item {
    Row(Row),
    Bad { index: u64, file: usize, row: u64, code: Option<u32>, error: String },
}

/// An input as the journal records it: a rerun must read the same rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputInfo {
    pub name: String,
    pub rows: u64,
    /// The `--descriptor-version` a .npy file's rows were read as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub descriptor_version: Option<u32>,
}

/// Rows to import, read in order, any number of times.
pub trait Source: Send {
    fn inputs(&self) -> &[InputInfo];

    /// Read every row in order. Rows for which `skip(index)` holds may be
    /// passed over unread; `emit` returns false to stop early.
    fn read(&mut self, skip: &dyn Fn(u64) -> bool, emit: &mut dyn FnMut(Item) -> bool) -> Result<(), String>;
}

/// The descriptor versions the importer checks rows against: luna-core's
/// defaults, as the service ships them.
pub fn versions() -> Versions {
    Versions::new(Versions::default_table(), 62).expect("the default version table")
}

/// Check a face's descriptor as the service would. Ok(Some(version)) when
/// valid, Ok(None) when its version is not in the default table (the
/// service's own table may have it: it decides).
pub fn check(versions: &Versions, face: &Face) -> Result<Option<u32>, (u32, String)> {
    match versions.parse(&face.data, face.version) {
        Ok(d) => Ok(Some(d.version)),
        Err(e) if e.code == ErrorCode::UnknownDescriptorVersion => Ok(None),
        Err(e) => Err((e.code.code(), e.detail)),
    }
}

#[derive(Debug, Clone, Copy)]
enum NpyType {
    U8,
    F32 { big_endian: bool },
}

enum Kind {
    Npy { ty: NpyType, cols: usize, meta: Option<PathBuf> },
    Sdk,
    Faces,
}

struct Input {
    path: PathBuf,
    kind: Kind,
}

/// Input files, checked and counted when opened.
pub struct Files {
    inputs: Vec<Input>,
    info: Vec<InputInfo>,
    /// `--descriptor-version`, for .npy rows.
    version: Option<u32>,
}

impl Files {
    /// Open and count `paths`; the i-th of `metas` goes with the i-th .npy file.
    pub fn open(paths: &[PathBuf], metas: &[PathBuf], version: Option<u32>) -> Result<Files, String> {
        let versions = versions();
        let mut metas = metas.iter();
        let mut inputs = Vec::new();
        let mut info = Vec::new();
        for path in paths {
            let name = path.display().to_string();
            let err = |e: String| format!("{name}: {e}");
            let mut head = [0u8; 6];
            let got = File::open(path).and_then(|mut f| read_up_to(&mut f, &mut head)).map_err(|e| err(e.to_string()))?;
            let (kind, rows) = if got == 6 && &head == NPY_MAGIC {
                let (ty, rows, cols) = npy_header(path).map_err(err)?;
                let payload = match ty {
                    NpyType::U8 => (version, cols),
                    NpyType::F32 { .. } => (Some(version.unwrap_or(DEFAULT_FLOAT_VERSION)), cols * 4),
                };
                if let Ok(spec) = versions.get(payload.0.unwrap_or(versions.default_version())) {
                    if spec.payload_len() != payload.1 || matches!(ty, NpyType::F32 { .. }) != (spec.dtype == Dtype::F32) {
                        return Err(err(format!(
                            "rows of {cols} x {} do not fit descriptor version {} ({} x {:?}); see --descriptor-version",
                            if matches!(ty, NpyType::U8) { "uint8" } else { "float32" },
                            payload.0.unwrap_or(versions.default_version()),
                            spec.length,
                            spec.dtype
                        )));
                    }
                }
                let meta = metas.next().cloned();
                if let Some(meta) = &meta {
                    let meta_rows = Meta::open(meta)?.count()?;
                    if meta_rows != rows {
                        return Err(format!("{}: {meta_rows} rows, but {name} has {rows}", meta.display()));
                    }
                }
                (Kind::Npy { ty, cols, meta }, rows)
            } else if got >= 4 && head[..4] == SDK_MAGIC[..] {
                (Kind::Sdk, count_sdk(path, &versions).map_err(err)?)
            } else if head[..got].iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                (Kind::Faces, count_lines(path).map_err(|e| err(e.to_string()))?)
            } else {
                return Err(err("not a .npy array, an SDK descriptor (dp\\0\\0...) or JSON lines of faces".into()));
            };
            let descriptor_version = if matches!(kind, Kind::Npy { .. }) { version } else { None };
            inputs.push(Input { path: path.clone(), kind });
            info.push(InputInfo { name, rows, descriptor_version });
        }
        if let Some(extra) = metas.next() {
            return Err(format!("--meta {}: there are more --meta files than .npy inputs", extra.display()));
        }
        Ok(Files { inputs, info, version })
    }
}

impl Source for Files {
    fn inputs(&self) -> &[InputInfo] {
        &self.info
    }

    fn read(&mut self, skip: &dyn Fn(u64) -> bool, emit: &mut dyn FnMut(Item) -> bool) -> Result<(), String> {
        let versions = versions();
        let mut base = 0u64;
        for (file, input) in self.inputs.iter().enumerate() {
            let mut reader = FileReader { file, base, skip, emit, stopped: false };
            let name = input.path.display();
            match &input.kind {
                Kind::Npy { ty, cols, meta } => reader.npy(&input.path, *ty, *cols, meta.as_deref(), self.version),
                Kind::Sdk => reader.sdk(&input.path, &versions),
                Kind::Faces => reader.faces(&input.path),
            }
            .map_err(|e| format!("{name}: {e}"))?;
            if reader.stopped {
                return Ok(());
            }
            base += self.info[file].rows;
        }
        Ok(())
    }
}

struct FileReader<'a> {
    file: usize,
    base: u64,
    skip: &'a dyn Fn(u64) -> bool,
    emit: &'a mut dyn FnMut(Item) -> bool,
    stopped: bool,
}

impl FileReader<'_> {
    /// Hand on the `ordinal`-th row (from 1) of the file, which it calls `row`;
    /// false once the consumer wants no more.
    fn give(&mut self, ordinal: u64, row: u64, face: Result<Face, (Option<u32>, String)>) -> bool {
        let (index, file) = (self.base + ordinal - 1, self.file);
        let item = match face {
            Ok(face) => Item::Row(Row { index, file, row, face }),
            Err((code, error)) => Item::Bad { index, file, row, code, error },
        };
        self.stopped = !(self.emit)(item);
        !self.stopped
    }

    fn skipped(&self, ordinal: u64) -> bool {
        (self.skip)(self.base + ordinal - 1)
    }

    fn npy(&mut self, path: &Path, ty: NpyType, cols: usize, meta: Option<&Path>, version: Option<u32>) -> Result<(), String> {
        let file = npyz::NpyFile::new(BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| e.to_string())?)).map_err(|e| e.to_string())?;
        let rows = file.shape()[0];
        let mut data = file.into_inner();
        file_end_check(&mut data, rows, cols, ty)?;
        let mut meta = meta.map(Meta::open).transpose()?;
        let row_bytes = cols * if matches!(ty, NpyType::U8) { 1 } else { 4 };
        let mut buf = vec![0u8; row_bytes];
        for row in 1..=rows {
            let extra = meta.as_mut().map(|m| m.next(row)).transpose()?;
            if self.skipped(row) {
                data.seek_relative(row_bytes as i64).map_err(|e| e.to_string())?;
                continue;
            }
            data.read_exact(&mut buf).map_err(|e| format!("row {row}: {e}"))?;
            let face = extra.unwrap_or(Ok((None, String::new()))).map(|(external_id, user_data)| {
                let (data, version) = match ty {
                    NpyType::U8 => (buf.clone(), version),
                    NpyType::F32 { big_endian } => {
                        let le = buf.chunks_exact(4).flat_map(|c| if big_endian { [c[3], c[2], c[1], c[0]] } else { [c[0], c[1], c[2], c[3]] }).collect();
                        (le, Some(version.unwrap_or(DEFAULT_FLOAT_VERSION)))
                    }
                };
                Face { data, version, account_id: None, external_id, user_data, lists: Vec::new() }
            });
            if !self.give(row, row, face) {
                break;
            }
        }
        Ok(())
    }

    fn sdk(&mut self, path: &Path, versions: &Versions) -> Result<(), String> {
        let mut data = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
        let mut row = 0;
        while let Some(container) = next_sdk(&mut data, versions, row == 0).map_err(|e| format!("descriptor {}: {e}", row + 1))? {
            row += 1;
            if self.skipped(row) {
                continue;
            }
            let face = match container {
                Ok(bytes) => Ok(Face { data: bytes, version: None, account_id: None, external_id: None, user_data: String::new(), lists: Vec::new() }),
                Err(e) => Err((Some(ErrorCode::BadDescriptorLength.code()), e)),
            };
            if !self.give(row, row, face) {
                break;
            }
        }
        Ok(())
    }

    fn faces(&mut self, path: &Path) -> Result<(), String> {
        let lines = BufReader::with_capacity(1 << 20, File::open(path).map_err(|e| e.to_string())?).lines();
        let mut ordinal = 0;
        for (n, line) in lines.enumerate() {
            let (line, row) = (line.map_err(|e| format!("line {}: {e}", n + 1))?, n as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            ordinal += 1;
            if !self.skipped(ordinal) && !self.give(ordinal, row, face_line(&line)) {
                break;
            }
        }
        Ok(())
    }
}

/// The body of `POST /1/faces`, account optional (the list's account is used).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaceLine {
    #[serde(default)]
    account_id: Option<Uuid>,
    descriptor: DescriptorInput,
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    user_data: String,
    #[serde(default)]
    lists: Vec<Uuid>,
}

fn face_line(line: &str) -> Result<Face, (Option<u32>, String)> {
    let f: FaceLine = serde_json::from_str(line).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() { ErrorCode::BadJson } else { ErrorCode::SchemaViolation };
        (Some(code.code()), e.to_string())
    })?;
    let data = f.descriptor.data.decode().map_err(|e| (Some(e.code.code()), e.detail))?;
    Ok(Face { data, version: f.descriptor.version, account_id: f.account_id, external_id: f.external_id, user_data: f.user_data, lists: f.lists })
}

/// `external_id` / `user_data` per row: CSV with a header, or JSON lines.
enum Meta {
    Csv { records: csv::StringRecordsIntoIter<File>, external_id: Option<usize>, user_data: Option<usize>, name: String },
    Lines { lines: std::io::Lines<BufReader<File>>, name: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaLine {
    #[serde(default)]
    external_id: Option<String>,
    #[serde(default)]
    user_data: String,
}

type MetaRow = Result<(Option<String>, String), (Option<u32>, String)>;

impl Meta {
    fn open(path: &Path) -> Result<Meta, String> {
        let name = path.display().to_string();
        let file = File::open(path).map_err(|e| format!("{name}: {e}"))?;
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv")) {
            let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(file);
            let headers = reader.headers().map_err(|e| format!("{name}: {e}"))?.clone();
            let column = |n: &str| headers.iter().position(|h| h.trim() == n);
            let (external_id, user_data) = (column("external_id"), column("user_data"));
            if external_id.is_none() && user_data.is_none() {
                return Err(format!("{name}: the header names neither external_id nor user_data"));
            }
            Ok(Meta::Csv { records: reader.into_records(), external_id, user_data, name })
        } else {
            Ok(Meta::Lines { lines: BufReader::new(file).lines(), name })
        }
    }

    fn count(self) -> Result<u64, String> {
        match self {
            Meta::Csv { records, name, .. } => {
                records.enumerate().try_fold(0, |n, (i, r)| r.map(|_| n + 1).map_err(|e| format!("{name}: record {}: {e}", i + 1)))
            }
            Meta::Lines { mut lines, name } => lines.try_fold(0, |n, l| l.map(|l| n + u64::from(!l.trim().is_empty())).map_err(|e| format!("{name}: {e}"))),
        }
    }

    /// The next row's fields; a malformed row is that row's error, an unreadable file stops the import.
    fn next(&mut self, row: u64) -> Result<MetaRow, String> {
        match self {
            Meta::Csv { records, external_id, user_data, name } => {
                let record = records.next().ok_or_else(|| format!("{name}: no record for row {row}"))?;
                Ok(record.map_err(|e| (None, format!("{name}: {e}"))).map(|r| {
                    let field = |i: &Option<usize>| i.and_then(|i| r.get(i)).unwrap_or("").to_owned();
                    let ext = field(external_id);
                    ((!ext.is_empty()).then_some(ext), field(user_data))
                }))
            }
            Meta::Lines { lines, name } => loop {
                let line = lines.next().ok_or_else(|| format!("{name}: no line for row {row}"))?.map_err(|e| format!("{name}: {e}"))?;
                if !line.trim().is_empty() {
                    break Ok(serde_json::from_str::<MetaLine>(&line)
                        .map(|m| (m.external_id, m.user_data))
                        .map_err(|e| (Some(ErrorCode::SchemaViolation.code()), format!("{name}: {e}"))));
                }
            },
        }
    }
}

/// Type, rows and columns of a 2-d, C-ordered .npy array of uint8 or float32.
fn npy_header(path: &Path) -> Result<(NpyType, u64, usize), String> {
    let file = npyz::NpyFile::new(BufReader::new(File::open(path).map_err(|e| e.to_string())?)).map_err(|e| e.to_string())?;
    let npyz::DType::Plain(ty) = file.dtype() else {
        return Err("a structured dtype; want uint8 or float32".into());
    };
    let ty = match (ty.type_char(), ty.size_field()) {
        (npyz::TypeChar::Uint, 1) => NpyType::U8,
        (npyz::TypeChar::Float, 4) => NpyType::F32 { big_endian: ty.endianness() == npyz::Endianness::Big },
        _ => return Err(format!("dtype {ty}; want uint8 or float32")),
    };
    let &[rows, cols] = file.shape() else {
        return Err(format!("shape {:?}; want (rows, descriptor length)", file.shape()));
    };
    if file.order() != npyz::Order::C {
        return Err("Fortran order; save it C-ordered (numpy.ascontiguousarray)".into());
    }
    Ok((ty, rows, cols as usize))
}

/// A truncated array would fail at its last rows: refuse it before sending any.
fn file_end_check(data: &mut BufReader<File>, rows: u64, cols: usize, ty: NpyType) -> Result<(), String> {
    let at = data.stream_position().map_err(|e| e.to_string())?;
    let len = data.get_ref().metadata().map_err(|e| e.to_string())?.len();
    let want = rows * cols as u64 * if matches!(ty, NpyType::U8) { 1 } else { 4 };
    if len - at < want {
        return Err(format!("truncated: {} bytes of data, the header promises {want}", len - at));
    }
    Ok(())
}

/// The next SDK container: Ok(bytes), or Err(why) for a truncated last one.
/// A version outside the table hides where the next container starts: only
/// the first container of a file may have one, and it then takes the file.
fn next_sdk(data: &mut BufReader<File>, versions: &Versions, first: bool) -> Result<Option<Result<Vec<u8>, String>>, String> {
    let mut header = [0u8; 8];
    let got = read_up_to(data, &mut header).map_err(|e| e.to_string())?;
    if got == 0 {
        return Ok(None);
    }
    if got < 8 || header[..4] != SDK_MAGIC[..] {
        return Err("not an SDK container (dp\\0\\0 + version + payload)".into());
    }
    let version = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let mut container = header.to_vec();
    match versions.get(version) {
        Ok(spec) => {
            let mut payload = vec![0u8; spec.payload_len()];
            let got = read_up_to(data, &mut payload).map_err(|e| e.to_string())?;
            container.extend_from_slice(&payload[..got]);
            if got < payload.len() {
                return Ok(Some(Err(format!("truncated: version {version} takes {} bytes, the file ends after {got}", payload.len()))));
            }
        }
        Err(_) if first => {
            data.read_to_end(&mut container).map_err(|e| e.to_string())?;
        }
        Err(e) => return Err(format!("{}: the file's descriptors cannot be told apart", e.detail)),
    }
    Ok(Some(Ok(container)))
}

fn count_sdk(path: &Path, versions: &Versions) -> Result<u64, String> {
    let mut data = BufReader::new(File::open(path).map_err(|e| e.to_string())?);
    let mut rows = 0;
    while next_sdk(&mut data, versions, rows == 0).map_err(|e| format!("descriptor {}: {e}", rows + 1))?.is_some() {
        rows += 1;
    }
    Ok(rows)
}

fn count_lines(path: &Path) -> std::io::Result<u64> {
    BufReader::with_capacity(1 << 20, File::open(path)?).lines().try_fold(0, |n, l| l.map(|l| n + u64::from(!l.trim().is_empty())))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}
