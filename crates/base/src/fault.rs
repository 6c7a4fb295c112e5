//! Whose fault an error is: the input's (exit code 2) or the machine's and the work's (exit
//! code 1). Every library error type says it of itself, and the binaries decide an exit code
//! by walking an error's chain of causes to the first that knows, so the classification lives
//! with the error, not in a list kept in the CLI.
//!
//! A machine failure (a device that will not open, a CUDA call that fails, a download refused
//! because the machine is offline) is never the input's, even when the user could work around
//! it with another flag.

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// What the user wrote is wrong: a value, a path, a file's contents. Exit code 2.
    Input,
    /// The machine or the work failed. Exit code 1.
    Machine,
    /// A signal stopped the work (Ctrl-C is SIGINT, 2). Exit code 128 + the signal, as a shell
    /// reports a process the signal killed: 130 for SIGINT, 143 for SIGTERM.
    Interrupted(i32),
}

impl Fault {
    pub fn exit_code(self) -> u8 {
        match self {
            Fault::Input => 2,
            Fault::Machine => 1,
            Fault::Interrupted(signal) => (128 + signal).clamp(129, 255) as u8,
        }
    }
}

/// An error that knows whose fault it is. Error enums that wrap another crate's error
/// (`#[error(transparent)]`) ask the wrapped one: a transparent variant hides it from the
/// chain of causes.
pub trait Classify {
    fn fault(&self) -> Fault;
}

/// One way to recognise an error type in a chain of causes.
pub type Classifier = fn(&(dyn std::error::Error + 'static)) -> Option<Fault>;

/// The [`Classifier`] of `T`: `classifier::<MemoryError>` is one.
pub fn classifier<T: Classify + std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> Option<Fault> {
    e.downcast_ref::<T>().map(Classify::fault)
}

/// The fault of the first cause in `chain` that one of `classifiers` recognises; a machine
/// fault when none does (an I/O error with no context is not the input's).
pub fn classify<'a>(
    chain: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
    classifiers: &[Classifier],
) -> Fault {
    chain
        .into_iter()
        .find_map(|cause| classifiers.iter().find_map(|c| c(cause)))
        .unwrap_or(Fault::Machine)
}

impl Classify for crate::units::SizeError {
    fn fault(&self) -> Fault {
        Fault::Input
    }
}

impl Classify for crate::units::DurationError {
    fn fault(&self) -> Fault {
        Fault::Input
    }
}

impl Classify for crate::run_dir::TopicError {
    fn fault(&self) -> Fault {
        Fault::Input
    }
}

impl Classify for crate::FileError {
    /// A file that cannot be written or read is the machine's business (a full disk, a
    /// permission), unless it simply is not there, which is what the user named.
    fn fault(&self) -> Fault {
        match self.source.kind() {
            std::io::ErrorKind::NotFound => Fault::Input,
            _ => Fault::Machine,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped: {0}")]
    struct Wrapper(#[source] crate::units::SizeError);

    #[test]
    fn the_first_cause_that_knows_decides() {
        let size = crate::parse_size("lots").unwrap_err();
        let wrapped = Wrapper(size);
        let chain = || {
            let mut causes: Vec<&(dyn std::error::Error + 'static)> = vec![&wrapped];
            if let Some(s) = std::error::Error::source(&wrapped) {
                causes.push(s);
            }
            causes
        };
        let known: [Classifier; 1] = [classifier::<crate::units::SizeError>];
        assert_eq!(classify(chain(), &known), Fault::Input);
        assert_eq!(classify(chain(), &[]), Fault::Machine);
        assert_eq!(Fault::Input.exit_code(), 2);
        assert_eq!(Fault::Machine.exit_code(), 1);
        assert_eq!(Fault::Interrupted(2).exit_code(), 130);
        assert_eq!(Fault::Interrupted(15).exit_code(), 143);
    }

    #[test]
    fn a_missing_file_is_the_input_and_a_full_disk_the_machine() {
        let missing = crate::FileError::new(
            "cannot read",
            "/x",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert_eq!(missing.fault(), Fault::Input);
        let full = crate::FileError::new(
            "cannot write",
            "/x",
            std::io::Error::from(std::io::ErrorKind::StorageFull),
        );
        assert_eq!(full.fault(), Fault::Machine);
    }
}
