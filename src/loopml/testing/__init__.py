"""Kit for plugin authors: fresh plugin managers, in-process registration, a hook recorder, and a
conformance suite per backend kind.

A plugin's tests subclass the suite of its kind and provide one fixture::

    from loopml.testing import ArtifactStoreSuite

    class TestGcsStore(ArtifactStoreSuite):
        @pytest.fixture
        def store(self, gcs_bucket):
            return GcsStore(gcs_bucket)

Optional capabilities are methods a subclass may override; the tests that need them skip
otherwise, with a reason that starts "not applicable" (loopml's CI fails every other skip).

The pytest plugin ``loopml.testing.pytest_plugin`` (auto-loaded) adds the fixtures
``loopml_plugins`` (a fresh manager with built-ins only) and ``loopml_hook_recorder``.
"""

from loopml.testing.approvals_suite import ApprovalsSuite
from loopml.testing.feature_store_suite import FeatureStoreSuite
from loopml.testing.kit import HookRecorder, fresh_plugin_manager, registered_plugin
from loopml.testing.registry_suite import RegistrySuite
from loopml.testing.serving_suite import MonitorSuite, ServingBackendSuite
from loopml.testing.store_suite import ArtifactStoreSuite
from loopml.testing.tracker_suite import TrackerSuite
from loopml.testing.trainer_suite import TrainerSuite

__all__ = [
    "ApprovalsSuite",
    "ArtifactStoreSuite",
    "FeatureStoreSuite",
    "HookRecorder",
    "MonitorSuite",
    "RegistrySuite",
    "ServingBackendSuite",
    "TrackerSuite",
    "TrainerSuite",
    "fresh_plugin_manager",
    "registered_plugin",
]
