//! Requests in flight at once, bounded: the backpressure between the
//! pipeline and a server.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use npd_core::Result;

/// Applies `f` to every item on at most `concurrency` threads; the results
/// are in item order, and the first error (in item order) is returned.
/// Once an item failed, items not yet started are skipped.
pub fn map_bounded<T: Sync, R: Send>(
    items: &[T],
    concurrency: usize,
    f: impl Fn(usize, &T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    let workers = concurrency.clamp(1, items.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= items.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let r = f(i, &items[i]);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(items.len());
    let mut first_err = None;
    for slot in slots {
        match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => {
                first_err.get_or_insert(e);
            }
            None => {}
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use npd_core::Error;

    #[test]
    fn keeps_order_and_reports_the_first_error() {
        let items: Vec<usize> = (0..50).collect();
        let out = map_bounded(&items, 4, |_, &x| Ok(x * 2)).unwrap();
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let err = map_bounded(&items, 3, |_, &x| {
            if x == 7 {
                Err(Error::invalid(format!("item {x}"), "bad"))
            } else {
                Ok(x)
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("item 7"), "{err}");
        assert!(
            map_bounded(&[] as &[usize], 4, |_, &x| Ok(x))
                .unwrap()
                .is_empty()
        );
    }
}
