//! Packing samples that arrive over time.

use npd_core::traits::Packer;
use npd_core::{Error, PackedRow, Result, TrainSample};

use crate::pack::{PackOptions, TopKShape, prepare};
use crate::row::RowLayout;

/// Packs samples as they arrive (from asynchronous rollouts), keeping a few
/// rows open and emitting each one when it is full enough.
///
/// A sample goes into the open row with the least room that fits it (best
/// fit); if none fits and `max_open` rows are already open, the fullest open
/// row is emitted first. A row is emitted as soon as its fill reaches
/// `min_fill`, or, with [`StreamingPacker::with_max_wait`], once it has been
/// open for that many pushes, so no sample waits long for a row to fill
/// (its policy version keeps ageing meanwhile).
/// [`Packer::flush`] emits the rest.
#[derive(Debug)]
pub struct StreamingPacker {
    options: PackOptions,
    min_fill: f64,
    max_open: usize,
    shape: TopKShape,
    open: Vec<OpenRow>,
    /// Pushes so far.
    pushes: u64,
    max_wait: Option<u64>,
}

#[derive(Debug)]
struct OpenRow {
    used: usize,
    samples: Vec<TrainSample>,
    /// Push count when the row was opened.
    opened: u64,
}

impl StreamingPacker {
    /// A packer that emits rows at `min_fill` (in (0, 1]) and keeps at most
    /// `max_open` (>= 1) rows open.
    pub fn new(options: PackOptions, min_fill: f64, max_open: usize) -> Result<Self> {
        if !(min_fill > 0.0 && min_fill <= 1.0) {
            return Err(Error::invalid(
                "StreamingPacker min_fill",
                format!("{min_fill}: expected a number in (0, 1]"),
            ));
        }
        if max_open == 0 {
            return Err(Error::invalid(
                "StreamingPacker max_open",
                "0: expected at least 1",
            ));
        }
        Ok(Self {
            options,
            min_fill,
            max_open,
            shape: TopKShape::default(),
            open: Vec::new(),
            pushes: 0,
            max_wait: None,
        })
    }

    /// Emits a row once it has been open for `pushes` pushes, however full.
    pub fn with_max_wait(mut self, pushes: u64) -> Self {
        self.max_wait = Some(pushes.max(1));
        self
    }

    /// Number of rows now open.
    pub fn open_rows(&self) -> usize {
        self.open.len()
    }

    /// Tokens waiting in open rows.
    pub fn pending_tokens(&self) -> usize {
        self.open.iter().map(|r| r.used).sum()
    }

    fn emit(&self, row: OpenRow) -> PackedRow {
        let layout = RowLayout {
            capacity: self.options.capacity,
            pad_id: self.options.pad_id,
            topk: self.shape.k(),
            policy: self.shape.policy(),
        };
        layout.build(&row.samples)
    }

    fn ready(&self, row: &OpenRow) -> bool {
        row.used as f64 >= self.min_fill * self.options.capacity as f64
    }
}

impl Packer for StreamingPacker {
    fn push(&mut self, mut sample: TrainSample) -> Result<Vec<PackedRow>> {
        prepare(&mut sample, &self.options)?;
        self.shape.check(&sample)?;
        let cap = self.options.capacity;
        let len = sample.tokens.len();
        let mut out = Vec::new();

        let best = (0..self.open.len())
            .filter(|&r| cap - self.open[r].used >= len)
            .min_by_key(|&r| cap - self.open[r].used);
        let slot = match best {
            Some(r) => r,
            None => {
                if self.open.len() >= self.max_open {
                    let fullest = (0..self.open.len())
                        .max_by_key(|&r| (self.open[r].used, std::cmp::Reverse(r)))
                        .expect("max_open >= 1 rows are open");
                    let row = self.open.remove(fullest);
                    out.push(self.emit(row));
                }
                self.open.push(OpenRow {
                    used: 0,
                    samples: Vec::new(),
                    opened: self.pushes,
                });
                self.open.len() - 1
            }
        };
        self.open[slot].used += len;
        self.open[slot].samples.push(sample);

        if self.ready(&self.open[slot]) {
            let row = self.open.remove(slot);
            out.push(self.emit(row));
        }
        self.pushes += 1;
        if let Some(wait) = self.max_wait {
            let pushes = self.pushes;
            while let Some(i) = self.open.iter().position(|r| pushes - r.opened >= wait) {
                let row = self.open.remove(i);
                out.push(self.emit(row));
            }
        }
        Ok(out)
    }

    fn flush(&mut self) -> Vec<PackedRow> {
        let rows = std::mem::take(&mut self.open);
        rows.into_iter().map(|row| self.emit(row)).collect()
    }
}
