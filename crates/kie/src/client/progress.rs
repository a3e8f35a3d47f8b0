//! Progress bars for `kie download`: one per active file plus a total, drawn on stderr
//! only when it is a terminal (pipes and CI logs get none).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kie_sdk::Progress;

pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    files: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    bars: HashMap<usize, ProgressBar>,
    /// Per file: (bytes counted in the total, length counted in the total).
    counted: HashMap<usize, (u64, u64)>,
    finished: usize,
}

impl Bars {
    /// `None` when stderr is not a terminal.
    pub fn for_terminal(files: usize) -> Option<Arc<Bars>> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        total.set_message(format!("0/{files} files"));
        Some(Arc::new(Bars {
            multi,
            total,
            files,
            state: Mutex::new(State::default()),
        }))
    }

    pub fn update(&self, p: &Progress) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Started {
                index,
                path,
                total,
                offset,
            } => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let bar = s.bars.entry(*index).or_insert_with(|| {
                    let b = self.multi.insert_before(&self.total, ProgressBar::new(0));
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>12.dim} [{bar:30}] {bytes}/{total_bytes} {msg}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    b
                });
                bar.set_prefix(truncate(&name, 12));
                bar.set_length(total.unwrap_or(0));
                bar.set_position(*offset);
                // a restart or resume moves this file's share of the total
                let (old_pos, old_len) = s.counted.get(index).copied().unwrap_or((0, 0));
                let new_len = total.unwrap_or(0);
                self.total
                    .set_length(self.total.length().unwrap_or(0).saturating_sub(old_len) + new_len);
                self.total
                    .set_position(self.total.position().saturating_sub(old_pos) + offset);
                s.counted.insert(*index, (*offset, new_len));
            }
            Progress::Advanced { index, bytes } => {
                if let Some(b) = s.bars.get(index) {
                    b.inc(*bytes);
                }
                if let Some(c) = s.counted.get_mut(index) {
                    c.0 += bytes;
                }
                self.total.inc(*bytes);
            }
            Progress::Finished { index, .. } => {
                if let Some(b) = s.bars.remove(index) {
                    b.finish_and_clear();
                    self.multi.remove(&b);
                }
                s.finished += 1;
                self.total
                    .set_message(format!("{}/{} files", s.finished, self.files));
            }
        }
    }

    pub fn finish(&self) {
        self.total.finish_and_clear();
        let _ = self.multi.clear();
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
