"""Lets torchvision's Python side import beside the CPU build of torch in the test venv.

The only torchvision wheels on the package index are CUDA builds for another torch; their C
extension cannot load here, and torchvision then fails at import with "operator
torchvision::nms does not exist". ComfyUI needs only torchvision's Python code, so this module
(run from a .pth file that scripts/bootstrap.sh writes into the test venv, never shipped with
the pack) declares the two operator schemas torchvision registers fakes for, just before
torchvision is first imported. Nothing is imported at interpreter start-up.
"""
import sys


class _DefineTorchvisionOps:
    """A meta-path hook that fires once, on the first import of torchvision."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        try:
            import torch

            if not hasattr(torch.ops.torchvision, "nms"):
                lib = torch.library.Library("torchvision", "DEF")
                lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
                sys.modules[__name__]._library = lib  # keep the definitions alive
        except Exception as exc:  # never break an unrelated import
            print(f"[llm4gen torchvision shim] not applied: {exc}", file=sys.stderr)
        return None  # let the normal finders import torchvision


sys.meta_path.insert(0, _DefineTorchvisionOps())
