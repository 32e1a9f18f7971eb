"""A progress bar over images seen: kimg, images/s, resolution, fade alpha, losses."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total_images: int, start: int = 0, enabled: bool = True):
        fmt = "{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}]{postfix}"
        self.total = total_images
        self.bar = tqdm(total=total_images / 1000, initial=start / 1000, unit="kimg",
                        disable=not enabled, dynamic_ncols=True, bar_format=fmt,
                        # a log file (no terminal) gets a line every 30 s, not every step
                        mininterval=0.5 if sys.stderr.isatty() else 30.0)
        self.seen = start

    def update(self, images_seen: int, scalars: dict[str, float] | None = None) -> None:
        images_seen = min(images_seen, self.total)  # the last batch may overshoot the total
        self.bar.update((images_seen - self.seen) / 1000)
        self.seen = images_seen
        if scalars:
            post = {"img/s": f"{scalars.get('images_per_s', 0):.0f}",
                    "res": int(scalars.get("resolution", 0)),
                    "alpha": f"{scalars.get('alpha', 1):.2f}"}
            post |= {k.split("/")[-1]: f"{v:.3f}" for k, v in scalars.items()
                     if k.startswith("loss/")}
            self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        self.bar.close()
