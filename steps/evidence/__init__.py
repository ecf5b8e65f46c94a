"""Evidence: one signed, digest-checked bundle per release run, stored with the model version.

A bundle is a directory::

    statement.json      in-toto Statement v1 with a SLSA Provenance v1 predicate (see `build_statement`)
    statement.dsse.json the statement in a DSSE envelope signed with Ed25519 (when a key is given; see `dsse`)
    inputs/<spec>       the release spec as it was read
    results/*.json      the reports the run produced, byte for byte (quality, safety, gate, latency, canary log)
    manifest.json       sha256 and size of every file above
    manifest.sha256     the evidence digest: sha256 of manifest.json's bytes
    report.html         the HTML release report (shows the digest, so it is outside the manifest)

It is written to the artifact store (`$LLMRELEASE_HOME/evidence/<model>/<version>/<workflow-uid>/`), logged as
the artifacts of an MLflow run in experiment `llmrelease-evidence`, and the model version is tagged
`llmrelease.evidence` with the run id and the digest. `verify_bundle` recomputes every digest; any change, added
or removed file fails, naming the file; provenance is anchored by the registry's digest or a trusted signature.
Failed runs get evidence too: a report that is missing is recorded as missing, never an error.

Modules: `layout` (file names, registry names, the error), `statement` (result kinds, summaries, the in-toto
statement), `dsse` (the signed envelope), `bundle` (writing, manifest, digest), `verify` (verification),
`collect` (the Hera entry `evidence_step`, `run` and MLflow storage). The Hera runner entry stays reachable
as `steps.evidence:evidence_step`.
"""

from steps.evidence.bundle import write_bundle
from steps.evidence.collect import (
    EvidenceParams,
    EvidenceResult,
    Outputs,
    evidence_root,
    evidence_step,
    inputs_from_params,
    run,
)
from steps.evidence.dsse import PAYLOAD_TYPE
from steps.evidence.layout import (
    DIGEST_FILE,
    ENVELOPE,
    EXPECTED_KINDS,
    KEY_ENV,
    KEY_SECRET,
    KEY_SECRET_KEY,
    MANIFEST,
    PUBKEY_ENV,
    REPORT,
    RESULT_FILES,
    SIGNED_ENVIRONMENTS,
    STATEMENT,
    EvidenceError,
)
from steps.evidence.statement import (
    BUILD_TYPE,
    BUILDER_ID,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    Inputs,
    build_statement,
    classify,
    summarize_results,
)
from steps.evidence.verify import Verified, verify_bundle

__all__ = [
    "BUILDER_ID",
    "BUILD_TYPE",
    "DIGEST_FILE",
    "ENVELOPE",
    "EXPECTED_KINDS",
    "KEY_ENV",
    "KEY_SECRET",
    "KEY_SECRET_KEY",
    "MANIFEST",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "PUBKEY_ENV",
    "REPORT",
    "RESULT_FILES",
    "SIGNED_ENVIRONMENTS",
    "STATEMENT",
    "STATEMENT_TYPE",
    "EvidenceError",
    "EvidenceParams",
    "EvidenceResult",
    "Inputs",
    "Outputs",
    "Verified",
    "build_statement",
    "classify",
    "evidence_root",
    "evidence_step",
    "inputs_from_params",
    "run",
    "summarize_results",
    "verify_bundle",
    "write_bundle",
]
