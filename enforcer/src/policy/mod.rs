//! The network admin's side: policy files, their validation, the compiler, and the
//! offline tools (check, explain, diff, sign, verify).
//!
//! Data flow: [`source`] loads files, [`syntax`] reads their TOML shape, [`validate`]
//! turns them into a typed [`model::Policy`] with [`diagnostic`]s, [`compile`] produces
//! the [`image::MapImage`] the kernel maps will hold (with the [`names::GenerationNames`]
//! that turn its numbers back into words once applied), and [`lookup`] runs the kernel's
//! lookup procedure over an image. [`reference`] is the plain-words semantics everything
//! is tested against.

pub mod analysis;
pub mod bundle;
pub mod chunk;
pub mod compile;
pub mod diagnostic;
pub mod diff;
pub mod explain;
pub mod image;
pub mod lookup;
pub mod model;
pub mod names;
pub mod reference;
pub mod source;
pub mod syntax;
pub mod validate;

use std::path::PathBuf;

use diagnostic::Diagnostic;
use image::MapImage;
use model::Policy;
use source::{SourceError, SourceSet};

/// A policy that compiled.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Its files.
    pub sources: SourceSet,
    /// The typed policy.
    pub policy: Policy,
    /// What the kernel maps will hold.
    pub image: MapImage,
    /// Warnings (the policy compiled despite them).
    pub warnings: Vec<Diagnostic>,
}

/// A policy that did not compile, with every finding.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Its files.
    pub sources: SourceSet,
    /// Errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
}

/// Why a policy path could not be turned into an image.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The files could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The files are not a valid policy.
    #[error("{} error(s) in the policy", .0.diagnostics.iter().filter(|d| d.is_error()).count())]
    Rejected(Box<Rejected>),
}

/// Validates and compiles loaded sources.
pub fn compile_sources(sources: SourceSet) -> Result<Compiled, Box<Rejected>> {
    let validated = validate::validate(&sources);
    let Some(policy) = validated.policy else {
        return Err(Box::new(Rejected {
            sources,
            diagnostics: validated.diagnostics,
        }));
    };
    // The shadowing analysis and the compiler only read the policy: run them side by side.
    let (warnings, compiled) = std::thread::scope(|scope| {
        let analysis = scope.spawn(|| analysis::warnings(&policy));
        let compiled = compile::compile(&policy);
        (
            analysis.join().expect("the analysis does not panic"),
            compiled,
        )
    });
    let mut diagnostics = validated.diagnostics;
    diagnostics.extend(warnings);
    diagnostic::sort_by_place(&mut diagnostics);
    match compiled {
        Ok(image) => Ok(Compiled {
            sources,
            policy,
            image,
            warnings: diagnostics,
        }),
        Err(mut errors) => {
            errors.extend(diagnostics);
            Err(Box::new(Rejected {
                sources,
                diagnostics: errors,
            }))
        }
    }
}

/// Loads, validates and compiles the policy at `paths` (files or directories).
pub fn load(paths: &[PathBuf]) -> Result<Compiled, PolicyError> {
    let sources = SourceSet::load(paths)?;
    compile_sources(sources).map_err(PolicyError::Rejected)
}
