/// Errors of the autograd layer: a tensor op's error, or a misuse of the tape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tensor(#[from] echo_tensor::Error),
    #[error("a variable from another tape was used in this one")]
    ForeignVar,
    #[error("backward needs a scalar loss, got shape {0}")]
    NotScalar(echo_tensor::Shape),
    #[error("backward seed shape {seed} does not match the output's {out}")]
    SeedShape { seed: echo_tensor::Shape, out: echo_tensor::Shape },
    #[error("parameter `{0}` is already registered")]
    DuplicateParam(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;
