//! What the serving commands (`listen --keep`, `listen --keep --exec`) share: a bound on the
//! connections served at once, and `-v` messages on stderr.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Says something on stderr (`-v`).
pub(crate) fn tell(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(io::stderr(), "hvsock: {message}");
}

/// Bounds the connections `--keep` serves at once.
#[derive(Debug)]
pub(crate) struct Gate {
    free: Mutex<u32>,
    freed: Condvar,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Gate>);

impl Gate {
    pub(crate) fn new(max: u32) -> Arc<Gate> {
        Arc::new(Gate {
            free: Mutex::new(max),
            freed: Condvar::new(),
        })
    }

    pub(crate) fn acquire(self: &Arc<Gate>) -> Permit {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Permit(self.clone())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut free = self.0.free.lock().unwrap_or_else(PoisonError::into_inner);
        *free += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::thread;
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_gate_admits_at_most_max_and_reopens() {
        let gate = Gate::new(2);
        let a = gate.acquire();
        let _b = gate.acquire();
        let waiter = {
            let gate = gate.clone();
            thread::spawn(move || drop(gate.acquire()))
        };
        thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "a third permit was given out");
        drop(a);
        waiter
            .join()
            .expect("the waiter ends once a permit is back");
    }
}
