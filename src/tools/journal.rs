//! The import journal: what was sent and what the service acknowledged, so an
//! interrupted import resumes without sending a row twice.
//!
//! JSON lines, appended: a header, then for every bulk request a `sent`
//! record, on disk before the request leaves, and its outcome: `ack` (the
//! face ids the service answered) or `refused` (a 4xx: nothing stored). Rows
//! sent without an outcome are in doubt: the service may have stored them and
//! lost the answer. The importer asks the service about those before sending
//! them again. One write per record, so killing the importer never tears one.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::input::InputInfo;

pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub journal: u32,
    /// Prefix of the external ids given to rows that have none.
    pub import_id: String,
    pub url: String,
    pub list_id: Uuid,
    pub account_id: Uuid,
    /// The service's clock when the import began: faces it created for this
    /// import are no older.
    pub since: Option<String>,
    pub inputs: Vec<InputInfo>,
}

/// Row indexes as `[start, end)` ranges.
type Ranges = Vec<[u64; 2]>;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    Sent { rows: Ranges },
    Ack { rows: Ranges, face_ids: Vec<Uuid> },
    Refused { rows: Ranges },
}

/// What a journal says.
pub struct State {
    pub header: Header,
    /// The acknowledged face of each row, by row index.
    pub face_ids: Vec<Option<Uuid>>,
    /// Rows sent without an outcome.
    pub in_doubt: HashSet<u64>,
}

impl State {
    pub fn new(header: Header) -> State {
        let rows = header.inputs.iter().map(|i| i.rows).sum::<u64>() as usize;
        State { header, face_ids: vec![None; rows], in_doubt: HashSet::new() }
    }

    /// Read a journal; None when there is none.
    pub fn load(path: &Path) -> Result<Option<State>, String> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let err = |line: usize, e: &dyn std::fmt::Display| format!("{} line {line}: {e}", path.display());
        let mut lines = BufReader::new(file).lines();
        let Some(first) = lines.next() else { return Ok(None) };
        let header: Header = serde_json::from_str(&first.map_err(|e| err(1, &e))?).map_err(|e| err(1, &e))?;
        if header.journal != FORMAT {
            return Err(err(1, &format!("journal format {} is not {FORMAT}", header.journal)));
        }
        let mut state = State::new(header);
        let mut lines = lines.enumerate().peekable();
        while let Some((n, line)) = lines.next() {
            let line = line.map_err(|e| err(n + 2, &e))?;
            let record = match serde_json::from_str::<Record>(&line) {
                Ok(r) => r,
                // Only a power cut tears a record, and only the last one.
                Err(_) if lines.peek().is_none() => break,
                Err(e) => return Err(err(n + 2, &e)),
            };
            state.apply(record).map_err(|e| err(n + 2, &e))?;
        }
        Ok(Some(state))
    }

    fn apply(&mut self, record: Record) -> Result<(), String> {
        let rows = self.face_ids.len() as u64;
        let check = |r: &Ranges| r.iter().all(|[a, b]| a < b && *b <= rows).then_some(()).ok_or_else(|| format!("rows {r:?} outside 0..{rows}"));
        match record {
            Record::Sent { rows } => {
                check(&rows)?;
                self.in_doubt.extend(expand(&rows));
            }
            Record::Ack { rows, face_ids } => {
                check(&rows)?;
                let indexes: Vec<u64> = expand(&rows).collect();
                if indexes.len() != face_ids.len() {
                    return Err(format!("{} rows but {} face ids", indexes.len(), face_ids.len()));
                }
                for (i, id) in indexes.into_iter().zip(face_ids) {
                    self.in_doubt.remove(&i);
                    self.face_ids[i as usize] = Some(id);
                }
            }
            Record::Refused { rows } => {
                check(&rows)?;
                expand(&rows).for_each(|i| {
                    self.in_doubt.remove(&i);
                });
            }
        }
        Ok(())
    }

    pub fn acknowledged(&self) -> u64 {
        self.face_ids.iter().filter(|f| f.is_some()).count() as u64
    }
}

/// Ascending indexes as ranges.
fn ranges(indexes: &[u64]) -> Ranges {
    let mut out: Ranges = Vec::new();
    for &i in indexes {
        match out.last_mut() {
            Some(last) if last[1] == i => last[1] += 1,
            _ => out.push([i, i + 1]),
        }
    }
    out
}

fn expand(ranges: &Ranges) -> impl Iterator<Item = u64> + '_ {
    ranges.iter().flat_map(|[a, b]| *a..*b)
}

type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// Appends records on a thread of its own. Records that must be on disk
/// before the importer goes on share one fsync (group commit).
pub struct Journal {
    tx: Option<mpsc::Sender<(Vec<u8>, Option<Reply>)>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Journal {
    /// A new journal holding `header`, on disk when this returns.
    pub fn create(path: &Path, header: &Header) -> Result<Journal, String> {
        let mut file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut line = serde_json::to_vec(header).expect("JSON");
        line.push(b'\n');
        file.write_all(&line).and_then(|_| file.sync_all()).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::append(path)
    }

    /// Append to an existing journal.
    pub fn append(path: &Path) -> Result<Journal, String> {
        let file = OpenOptions::new().append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        let name = path.display().to_string();
        let thread = std::thread::Builder::new().name("import-journal".into()).spawn(move || write_loop(file, rx, name)).map_err(|e| e.to_string())?;
        Ok(Journal { tx: Some(tx), thread: Some(thread) })
    }

    fn send(&self, record: &Record, reply: Option<Reply>) {
        let mut line = serde_json::to_vec(record).expect("JSON");
        line.push(b'\n');
        if let Some(tx) = &self.tx {
            // A send fails only once the writer has failed; close() reports why.
            let _ = tx.send((line, reply));
        }
    }

    /// Record rows about to be sent; returns once the record is on disk.
    pub async fn sent(&self, rows: &[u64]) -> Result<(), String> {
        let (reply, done) = tokio::sync::oneshot::channel();
        self.send(&Record::Sent { rows: ranges(rows) }, Some(reply));
        done.await.map_err(|_| "the journal writer stopped".to_string())?
    }

    /// Record stored rows. Not waited for: if lost, the rows are in doubt and asked about.
    pub fn ack(&self, rows: &[u64], face_ids: &[Uuid]) {
        self.send(&Record::Ack { rows: ranges(rows), face_ids: face_ids.to_vec() }, None);
    }

    pub fn refused(&self, rows: &[u64]) {
        self.send(&Record::Refused { rows: ranges(rows) }, None);
    }

    /// Write what is queued, fsync, and stop the writer.
    pub fn close(mut self) -> Result<(), String> {
        drop(self.tx.take());
        self.thread.take().map_or(Ok(()), |t| t.join().unwrap_or_else(|_| Err("the journal writer panicked".into())))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(mut file: File, rx: mpsc::Receiver<(Vec<u8>, Option<Reply>)>, name: String) -> Result<(), String> {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        pending.extend(rx.try_iter());
        let mut buf = Vec::new();
        let mut replies = Vec::new();
        for (line, reply) in pending {
            buf.extend_from_slice(&line);
            replies.extend(reply);
        }
        if failed.is_none() {
            let durable = !replies.is_empty();
            if let Err(e) = file.write_all(&buf).and_then(|_| if durable { file.sync_data() } else { Ok(()) }) {
                failed = Some(format!("{name}: {e}"));
            }
        }
        for reply in replies {
            let _ = reply.send(failed.clone().map_or(Ok(()), Err));
        }
    }
    failed.map_or(Ok(()), Err)?;
    file.sync_data().map_err(|e| format!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sent_without_an_outcome_are_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.jsonl");
        let header = Header {
            journal: FORMAT,
            import_id: "abc".into(),
            url: "http://x".into(),
            list_id: Uuid::nil(),
            account_id: Uuid::nil(),
            since: None,
            inputs: vec![InputInfo { name: "a".into(), rows: 10, descriptor_version: None }],
        };
        let journal = Journal::create(&path, &header).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let id = Uuid::new_v4();
        rt.block_on(async {
            journal.sent(&[0, 1, 2]).await.unwrap();
            journal.ack(&[0, 2], &[id, id]);
            journal.refused(&[1]);
            journal.sent(&[3, 4, 6]).await.unwrap();
            journal.ack(&[6], &[id]);
        });
        journal.close().unwrap();
        // A record torn by a power cut at the end is ignored.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"ack\": {\"rows\": [[3,").unwrap();
        let state = State::load(&path).unwrap().unwrap();
        let mut doubt: Vec<u64> = state.in_doubt.iter().copied().collect();
        doubt.sort();
        assert_eq!(doubt, vec![3, 4]);
        assert_eq!(state.acknowledged(), 3);
        assert_eq!(state.face_ids[1], None);
    }
}
