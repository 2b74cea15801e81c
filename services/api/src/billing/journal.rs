//! The local durable journal of settlements: every finished call's usage is appended here (one
//! JSON line, fsync'd once per batch) before it is written to the database, so a database outage
//! or a crash after the fsync loses nothing. Entries are removed once the database has them; a
//! replay is idempotent because the ledger keys usage by call id.
//!
//! Layout: `<dir>/<replica id>/journal.jsonl`, plus a `lock` file that the owning process holds
//! (an OS file lock, gone with the process however it dies). At start a process adopts every
//! replica folder whose lock is free: a predecessor that was killed, or one that left a backlog.

use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use anyhow::Context;
use uuid::Uuid;

use super::Settlement;

const JOURNAL_FILE: &str = "journal.jsonl";
const LOCK_FILE: &str = "lock";

/// This process's journal. Blocking file I/O: call it from `spawn_blocking`.
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Held for the life of the process: other processes see the folder as owned.
    _lock: File,
}

/// A dead predecessor's journal folder, adopted by this process.
pub struct Orphan {
    pub replica_id: Uuid,
    pub dir: PathBuf,
    pub entries: Vec<Settlement>,
    /// Lines that could not be parsed (a write torn by a crash): logged and counted, not replayed.
    pub torn_lines: usize,
    _lock: File,
}

impl Orphan {
    /// Deletes the folder once its entries are in the database and its leases are released.
    pub fn remove(self) -> std::io::Result<()> {
        fs::remove_dir_all(&self.dir)
    }
}

impl Journal {
    /// Creates this process's folder under `root` and returns the journal together with every
    /// unowned folder found there (their entries are to be replayed before serving).
    pub fn open(root: &Path, replica_id: Uuid) -> anyhow::Result<(Self, Vec<Orphan>)> {
        fs::create_dir_all(root).with_context(|| {
            format!("creating the billing journal folder {} (set PR_BILLING_JOURNAL_DIR)", root.display())
        })?;
        let orphans = orphans(root, replica_id)?;
        // Locked before it gets its name: a replica starting at the same moment never sees this
        // folder unlocked (it would adopt it). The lock belongs to the open file, so it survives
        // the rename; names that are not a replica id are never adopted.
        let staging = root.join(format!(".{replica_id}.new"));
        fs::create_dir_all(&staging)?;
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(staging.join(LOCK_FILE))?;
        lock.try_lock().map_err(|e| anyhow::anyhow!("locking {}: {e}", staging.display()))?;
        let dir = root.join(replica_id.to_string());
        fs::rename(&staging, &dir)?;
        let file = OpenOptions::new().create(true).append(true).open(dir.join(JOURNAL_FILE))?;
        fsync_dir(&dir)?;
        fsync_dir(root)?;
        Ok((Self { dir, file, _lock: lock }, orphans))
    }

    /// Appends the entries and waits until they are on disk.
    pub fn append(&mut self, entries: &[Settlement]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(entries.len() * 256);
        for e in entries {
            serde_json::to_writer(&mut buf, e).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let len = self.file.metadata()?.len();
        if let Err(e) = self.file.write_all(&buf) {
            // No half line may glue onto the next append.
            let _ = self.file.set_len(len);
            return Err(e);
        }
        self.file.sync_data()
    }

    /// Empties the journal once everything in it is in the database. No fsync: if a crash
    /// undoes the truncation, the next start replays rows the ledger already has, which changes
    /// nothing (usage is keyed by call id).
    pub fn clear(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)
    }

    /// On a clean shutdown with nothing left to write: the folder goes, nobody needs to adopt it.
    pub fn remove(self) -> std::io::Result<()> {
        fs::remove_dir_all(&self.dir)
    }
}

/// The replica folders under `root` whose lock is free (their process is gone), except `own`'s;
/// each is returned locked, so no other process adopts it meanwhile.
pub fn orphans(root: &Path, own: Uuid) -> anyhow::Result<Vec<Orphan>> {
    let mut orphans = Vec::new();
    for entry in fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let entry = entry?;
        let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<Uuid>().ok()) else { continue };
        if id == own || !entry.file_type()?.is_dir() {
            continue;
        }
        let lock = match OpenOptions::new().create(true).truncate(false).write(true).open(entry.path().join(LOCK_FILE))
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) => return Err(e.into()),
        };
        if lock.try_lock().is_err() {
            continue; // a live replica owns it
        }
        let (entries, torn_lines) = read_entries(&entry.path().join(JOURNAL_FILE))?;
        orphans.push(Orphan { replica_id: id, dir: entry.path(), entries, torn_lines, _lock: lock });
    }
    Ok(orphans)
}

fn read_entries(path: &Path) -> anyhow::Result<(Vec<Settlement>, usize)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut entries = Vec::new();
    let mut torn = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Settlement>(&line) {
            Ok(e) => entries.push(e),
            Err(_) => torn += 1,
        }
    }
    Ok((entries, torn))
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;

    fn entry(n: u8) -> Settlement {
        Settlement {
            call_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            replica_id: Uuid::nil(),
            model: "m".into(),
            input_tokens: n.into(),
            output_tokens: 2,
            cost_usd: Decimal::new(n.into(), 6),
            estimated: false,
            flags: vec![],
            request_id: format!("r{n}"),
        }
    }

    #[test]
    fn a_dead_replicas_journal_is_adopted_with_its_entries_and_a_torn_tail_is_skipped() {
        let root = tempfile_dir();
        let dead = Uuid::new_v4();
        {
            let (mut j, orphans) = Journal::open(&root, dead).unwrap();
            assert!(orphans.is_empty());
            j.append(&[entry(1), entry(2)]).unwrap();
            // A crash in the middle of a write leaves half a line.
            j.file.write_all(b"{\"call_id\":\"12").unwrap();
        } // the process "dies": its lock goes with it
        let (live, orphans) = Journal::open(&root, Uuid::new_v4()).unwrap();
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].replica_id, dead);
        assert_eq!(orphans[0].entries.iter().map(|e| e.input_tokens).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(orphans[0].torn_lines, 1);
        // A third process does not adopt the live replica's folder nor the adopted one.
        let (_third, more) = Journal::open(&root, Uuid::new_v4()).unwrap();
        assert!(more.is_empty(), "folders with a live owner are left alone");
        drop(live);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn replicas_starting_together_on_one_volume_never_adopt_each_other() {
        let root = tempfile_dir();
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || Journal::open(&root, Uuid::new_v4()).map(|(j, orphans)| (j, orphans.len())))
            })
            .collect();
        let opened: Vec<_> = starts.into_iter().map(|t| t.join().unwrap().expect("every replica starts")).collect();
        assert!(opened.iter().all(|(_, orphans)| *orphans == 0), "no live replica was adopted");
        drop(opened);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn clear_empties_the_journal_and_appends_go_on() {
        let root = tempfile_dir();
        let id = Uuid::new_v4();
        let (mut j, _) = Journal::open(&root, id).unwrap();
        j.append(&[entry(1), entry(2), entry(3)]).unwrap();
        j.clear().unwrap();
        j.append(&[entry(4)]).unwrap();
        let (entries, torn) = read_entries(&root.join(id.to_string()).join(JOURNAL_FILE)).unwrap();
        assert_eq!((entries.iter().map(|e| e.input_tokens).collect::<Vec<_>>(), torn), (vec![4], 0));
        std::fs::remove_dir_all(&root).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pr-journal-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
