//! The non-blocking log writer shared by the access log and the application logs. Request
//! handlers only append a finished line to an in-memory buffer under a short lock; one background
//! thread swaps the buffer out and writes whole batches to the sink. Appending never waits on
//! I/O: when the buffer is full (the sink is stuck), lines are dropped and counted instead.
//! Dropping the [`LogGuard`] writes out everything still buffered.

use std::{
    io::Write,
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use tracing_subscriber::fmt::MakeWriter;

/// Bytes held in memory before new lines are dropped.
const MAX_BUFFERED_BYTES: usize = 32 * 1024 * 1024;
/// After each batch the writer pauses this long, so that under load one wake-up carries many
/// lines instead of one wake-up (and one write) per request.
const BATCH_WINDOW: Duration = Duration::from_millis(2);

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Flushes and stops the writer thread when dropped.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    pub fn new(sink: Box<dyn Write + Send + 'static>) -> (Self, LogGuard) {
        let shared =
            Arc::new(Shared { state: Mutex::new(State::default()), wake: Condvar::new(), dropped: AtomicU64::new(0) });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("pr-log-writer".into())
            .spawn(move || run(&worker, sink))
            .expect("spawning the log writer thread");
        (Self { shared: shared.clone() }, LogGuard { shared, thread: Some(thread) })
    }

    /// Appends one complete line (including its newline).
    pub fn write_line(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        if state.closed || state.buf.len() + line.len() > MAX_BUFFERED_BYTES {
            drop(state);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = state.buf.is_empty();
        state.buf.extend_from_slice(line);
        drop(state);
        if was_empty {
            self.shared.wake.notify_one();
        }
    }

    pub fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

fn run(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        let closed = {
            let mut state = shared.lock();
            while state.buf.is_empty() && !state.closed {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            std::mem::swap(&mut state.buf, &mut batch);
            state.closed
        };
        // A broken sink must not take the process down; lines are lost either way.
        let _ = sink.write_all(&batch).and_then(|()| sink.flush());
        batch.clear();
        if closed && shared.lock().buf.is_empty() {
            return;
        }
        std::thread::sleep(BATCH_WINDOW);
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `tracing-subscriber` formats each event into one buffer and writes it with one `write_all`,
/// so every write here is a whole line.
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_line(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (writer, guard) = LogWriter::new(Box::new(sink.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        w.write_line(format!("{t} {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 40_000);
        for t in 0..4 {
            let seq: Vec<u32> =
                text.lines().filter_map(|l| l.strip_prefix(&format!("{t} "))).map(|n| n.parse().unwrap()).collect();
            assert_eq!(seq, (0..10_000).collect::<Vec<_>>(), "lines of one thread keep their order");
        }
        assert_eq!(writer.dropped_lines(), 0);
        writer.write_line(b"after close\n");
        assert_eq!(writer.dropped_lines(), 1, "writes after shutdown are counted, not blocked");
    }

    #[test]
    fn a_stuck_sink_drops_lines_instead_of_blocking() {
        struct Stuck(Arc<(Mutex<bool>, Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let (lock, cv) = &*self.0;
                let mut go = lock.lock().unwrap();
                while !*go {
                    go = cv.wait(go).unwrap();
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let (writer, guard) = LogWriter::new(Box::new(Stuck(gate.clone())));
        let line = vec![b'x'; 1024 * 1024];
        // The writer thread may have swapped out one full buffer before it got stuck, so up to
        // twice the limit can be taken before lines must be dropped.
        for _ in 0..(2 * MAX_BUFFERED_BYTES / line.len() + 8) {
            writer.write_line(&line);
        }
        let dropped = writer.dropped_lines();
        // Unblock the sink before asserting: a failure must not hang the test in the guard's join.
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(guard);
        assert!(dropped > 0);
    }
}
