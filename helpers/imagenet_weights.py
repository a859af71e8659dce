"""imagenet_weights - torchvision's ImageNet weights for the ResNet encoder, by download or from a file.

Serves 02_unet.py's ResNet (through 04_bins.DepthNet and 05's PoseResNet): because the encoder keeps
torchvision's parameter names, torchvision's published weights load with strict=True. Fetching them
(torch.hub's cache, SHA-256 check, one clear line when offline) is engineering a reader can skip.
Tests: tests/test_02_unet.py.
"""
import torch


# torchvision's published ImageNet weights (IMAGENET1K_V1, the ones `pretrained=True` gives).
IMAGENET_URLS = {
    18: "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    34: "https://download.pytorch.org/models/resnet34-b627a593.pth",
    50: "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}

def load_pretrained(encoder_module, spec):
    """Load ImageNet weights into a `ResNet`: spec None (nothing), "imagenet" (download) or a file path.

    Loading is strict: a file with other keys or shapes raises ValueError naming the file.
    """
    if spec is None or spec == "" or spec == "none":
        return
    if spec == "imagenet":
        url = IMAGENET_URLS[encoder_module.num_layers]
        # torch.hub downloads into a temporary file of a unique name and then renames it, so several
        # processes fetching at once (torchrun ranks, two runs) cannot break each other; check_hash
        # compares the download with the SHA-256 prefix in torchvision's file name.
        try:
            state = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True)
        except Exception as err:  # offline, proxy, certificate...: one clear line
            raise ValueError(f"could not download ImageNet weights from {url} ({type(err).__name__}); "
                             f"download the file elsewhere and pass its path as --pretrained PATH") from None
        source = url
    else:
        try:
            state = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as err:  # missing file, not a torch file, pickled objects, ...: one line
            raise ValueError(f"cannot read pretrained weights {spec} (not a PyTorch weights file? "
                             f"{type(err).__name__}: {err})".splitlines()[0]) from None
        source = spec
    try:
        encoder_module.load_state_dict(state, strict=True)
    except (RuntimeError, AttributeError, TypeError) as err:
        first = str(err).splitlines()[1:2] or [str(err)]
        raise ValueError(f"{source} is not a torchvision ResNet-{encoder_module.num_layers} state dict: "
                         f"{first[0].strip()}") from None
