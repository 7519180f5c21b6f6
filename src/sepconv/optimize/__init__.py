"""Inference preparation: fold BatchNorm, choose the memory format and the execution path.

``optimize_for_inference(model, example_input)`` returns a new, inference-only module:

1. **BatchNorm folding** — a BatchNorm that takes a conv's output, wherever ``forward`` calls it
   (found on the ``torch.fx`` graph, see :mod:`sepconv.graph`), and the norm between the factors
   of a sepconv layer are folded into the preceding conv's weight and bias (exact in eval mode),
   removing a full pass over the activations each. The result's ``batchnorms`` says, per
   BatchNorm, into which conv it was folded or why it was left alone.
2. **Lowering** — a sepconv layer whose child convs do their own padding becomes a plain
   ``nn.Sequential`` of them (no per-call input checks or identity modules).
3. **Memory format** — ``channels_last`` (NHWC): oneDNN's depthwise and 1x1 kernels are several
   times faster on it than on NCHW, and the 1x1 conv becomes a plain GEMM over pixels.
4. **Fused depthwise + pointwise kernel** (``csrc/fused_dwpw.cpp``, candidate ``'fused'``): per
   tile of output pixels, the depthwise result is computed into an L2-sized buffer and consumed
   at once by a register-blocked GEMM, so the intermediate tensor never goes to memory; BatchNorm
   (folded), ReLU/ReLU6 between and after the factors are fused. Chosen **per layer** by a
   measured dispatch on the layer's own input (interleaved medians): it replaces the PyTorch
   path only where it is faster. Its large outputs come from a small caching allocator (see
   :func:`release_buffers`). Blueprint separable layers (pointwise, then a grouped conv summing
   ``rank`` channels per output, which PyTorch runs several times slower than the dense conv they
   replace) get the same treatment (``csrc/blueprint.cpp``, :class:`FusedBlueprintConv2d`): per
   band of output rows the pointwise result goes to an L2-sized buffer, from which the grouped
   conv reads it. The same dispatch tries the kernel's GEMM for a dense conv with few
   inputs per output (:class:`FusedConv2d`: a network's stem on RGB input, patches read in place,
   ReLU fused) and for linear layers (:class:`FusedLinear`: weights packed once; the BLAS path
   repacks them on every call).
5. **Execution path**, chosen once by a measured dispatch on ``example_input`` (medians of
   interleaved runs): eager PyTorch on channels_last, eager with fused layers, a traced, frozen
   TorchScript graph run through ``torch.jit.optimize_for_inference`` (oneDNN with conv + ReLU
   fused and weights prepacked; with fused layers, the graph of the model with only its separable
   layers fused if that is faster: oneDNN keeps the stem and classifier in its own layouts), or
   (opt-in) inductor with freezing. The chosen path must match
   the reference output (relative error <= 1e-4 in float32) or the next best is used; eager
   channels_last always works and is the fallback, also when the kernel cannot be compiled.

Layout: :mod:`.fused` holds the fused inference modules and :func:`release_buffers`;
:mod:`.rewrite` the graph rewrites (BatchNorm folding, lowering, in-place activations);
:mod:`.module` the returned :class:`InferenceModule`; :mod:`.checks` the argument checks and the
output comparison; :mod:`.graphs` the TorchScript and inductor paths; :mod:`.dispatch` the
candidate paths, their checks and the measured choice (:func:`optimize_for_inference`).
"""

from .checks import CANDIDATES
from .dispatch import BACKENDS, STEM_MAX_K, TIE, _fuse, _fused_class, optimize_for_inference
from .fused import _ACTS, FusedBlueprintConv2d, FusedConv2d, FusedLinear, FusedSeparableConv2d, release_buffers
from .module import InferenceModule
from .rewrite import _CONVS, _inplace_activations, _lower, fold_batchnorms

__all__ = ["fold_batchnorms", "optimize_for_inference", "InferenceModule", "release_buffers"]
