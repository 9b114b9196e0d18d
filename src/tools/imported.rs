//! A list `luna-matcher import` loaded, read back for the bench: the
//! descriptors of the files the import read, each under the face id the
//! service acknowledged for its row, so that answers about the list can be
//! checked as a synthetic list's are.

use std::path::{Path, PathBuf};

use luna_core::index::Vectors;
use uuid::Uuid;

use super::input::{self, Files, Item, Source};
use super::journal::State;
use super::synthetic::{Gallery, ListSpec};
use super::workload::Known;

/// An imported list as the bench knows it.
pub struct Imported {
    pub list_id: Uuid,
    /// The version of every face of it.
    pub version: u32,
    pub gallery: Gallery,
    pub faces: Known,
}

/// Read the import whose `--out` directory is `dir`. Its input files are
/// named as the import was given them: run where the import ran.
pub fn read(dir: &Path) -> Result<Imported, String> {
    let shown = dir.display();
    let state = State::load(&dir.join("journal.jsonl"))?.ok_or_else(|| format!("{shown}: no import journal (give the --out directory of an import)"))?;
    if !state.in_doubt.is_empty() {
        return Err(format!("{shown}: {} rows in doubt; run the import again to settle them", state.in_doubt.len()));
    }
    let inputs = &state.header.inputs;
    let paths: Vec<PathBuf> = inputs.iter().map(|i| PathBuf::from(&i.name)).collect();
    let version = inputs.iter().find_map(|i| i.descriptor_version);
    let mut files = Files::open(&paths, &[], version).map_err(|e| format!("{e} (read by the import in {shown}: run where it ran)"))?;
    if files.inputs() != inputs.as_slice() {
        return Err(format!("{shown}: its input files changed since the import"));
    }
    let versions = input::versions();
    let mut rows: Option<(u32, Vectors)> = None;
    let mut ids = Vec::new();
    let mut failed = None;
    let acknowledged = |index: u64| state.face_ids[index as usize];
    files.read(&|index| acknowledged(index).is_none(), &mut |item| {
        let Item::Row(row) = item else { return true };
        let Some(id) = acknowledged(row.index) else { return true };
        let added = versions.parse(&row.face.data, row.face.version).map_err(|e| e.detail).and_then(|d| {
            let (version, vectors) = rows.get_or_insert_with(|| (d.version, Vectors::new(*versions.get(d.version).expect("a parsed version is in the table"))));
            if *version != d.version {
                return Err(format!("version {} beside version {version}: the bench matches one version a list", d.version));
            }
            vectors.push(&d.payload);
            Ok(())
        });
        match added {
            Ok(()) => ids.push(id),
            Err(e) => failed = Some(format!("row {} of {}: {e}", row.row, inputs[row.file].name)),
        }
        failed.is_none()
    })?;
    if let Some(e) = failed {
        return Err(format!("{shown}: {e}"));
    }
    let (version, vectors) = rows.ok_or_else(|| format!("{shown}: the import stored no face"))?;
    let gallery = Gallery { spec: ListSpec { dtype: vectors.spec.dtype, size: vectors.len() as u64 }, vectors };
    Ok(Imported { list_id: state.header.list_id, version, gallery, faces: Known::new(ids) })
}
