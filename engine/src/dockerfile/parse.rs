//! Lines to instructions.

use super::Dockerfile;
use super::error::DockerfileErrors;
use crate::lang::Src;

pub(super) fn parse(_src: Src, _text: &str) -> Result<Dockerfile, DockerfileErrors> {
    todo!()
}
