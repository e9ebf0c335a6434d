"""The `evaluate` section of params.yaml: bootstrap intervals, and the robustness stage's attacks and checks
(PGD at every radius, AutoAttack and the gradient-masking checks at the main radius)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from medvlm.params_base import Section


class AutoAttackParams(Section):
    """AutoAttack's APGD-CE + APGD-T (APGD-CE alone below four classes) at main_eps_255, on the items PGD did
    not fool among the first n_images of the main subset; robust accuracy there is the worst case per item
    over PGD and AutoAttack."""

    n_images: int = Field(8, ge=1, description="first items of the main subset AutoAttack attacks")
    iterations: int = Field(100, ge=1, description="iterations of each APGD run")
    restarts: int = Field(1, ge=1, description="random restarts of APGD-CE, and of APGD-T per target class")
    max_targets: int = Field(3, ge=1, description="APGD-T's target classes, at most (also at most classes - 1)")
    batch_size: int = Field(64, ge=1)


class MaskingCheckParams(Section):
    """Checks for gradient masking, reported beside the robust accuracy: a black-box attack needs no gradient,
    and a large enough ball must fool almost every image."""

    square_images: int = Field(8, ge=1, description="first items of the main subset the Square attack attacks")
    square_queries: int = Field(250, ge=1, description="Square's model queries per item")
    large_eps_255: float = Field(16.0, gt=0, description="PGD radius, in 1/255, that must fool about every item "
                                                           "(on the AutoAttack items)")


class RobustnessParams(Section):
    """Test-time L∞ PGD through the frozen image encoder and each head (docs/attacks.md).

    The main radius is attacked on a larger seeded subset than the others: the study's robustness claims are
    read there, and its paired minimum detectable difference shrinks with the number of items. The subsets
    are nested (the first items of one seeded permutation), so every radius's items are main-radius items."""

    eps_255: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0], min_length=1,
                                 description="attack radii in 1/255 pixel units")
    steps: int = Field(10, ge=1)
    step_fraction: float = Field(0.25, gt=0, le=1, description="PGD step size as a fraction of ε")
    random_start: bool = True
    main_eps_255: float = Field(1.0, description="the radius the claims are read at; one of eps_255")
    main_n_images: int = Field(300, ge=1, description="seeded subset of each test set attacked at main_eps_255")
    n_images: int = Field(100, ge=1, description="seeded subset of each test set attacked at the other radii")
    batch_size: int = Field(100, ge=1)
    check_steps: int = Field(100, ge=1, description="the stronger PGD of the convergence check at main_eps_255")
    check_images: int = Field(16, ge=1, description="first images of the main subset the check attacks")
    autoattack: AutoAttackParams = AutoAttackParams()
    masking: MaskingCheckParams = MaskingCheckParams()

    @field_validator("eps_255")
    @classmethod
    def _radii_non_negative_and_distinct(cls, radii: list[float]) -> list[float]:
        if any(eps < 0 for eps in radii):
            raise ValueError(f"every radius must be >= 0, got {radii}")
        if len(set(radii)) != len(radii):
            raise ValueError(f"radii must be distinct, got {radii}")
        return sorted(radii)

    @model_validator(mode="after")
    def _main_is_a_listed_radius(self) -> "RobustnessParams":
        if self.main_eps_255 not in self.eps_255:
            raise ValueError(f"main_eps_255 must be one of eps_255 {self.eps_255}, got {self.main_eps_255}")
        if self.main_n_images < self.n_images:
            raise ValueError(f"main_n_images ({self.main_n_images}) must be >= n_images ({self.n_images}): the "
                             "other radii attack the first n_images items of the main subset")
        for key, size in (("autoattack.n_images", self.autoattack.n_images),
                          ("masking.square_images", self.masking.square_images)):
            if size > self.main_n_images:
                raise ValueError(f"{key} ({size}) must be <= main_n_images ({self.main_n_images}): it attacks the "
                                 "first items of the main subset")
        if self.masking.large_eps_255 <= max(self.eps_255):
            raise ValueError(f"masking.large_eps_255 ({self.masking.large_eps_255:g}) must exceed every radius of "
                             f"eps_255 {self.eps_255}: it checks that a large ball fools about every item")
        if self.check_steps <= self.steps:
            raise ValueError(f"check_steps must exceed steps ({self.steps}) to be a stronger attack, "
                             f"got {self.check_steps}")
        return self


class BootstrapParams(Section):
    samples: int = Field(1000, ge=100, description="bootstrap resamples of the test set")
    confidence: float = Field(0.95, gt=0.5, lt=1)


class EvaluateParams(Section):
    batch_size: int = Field(1024, ge=1)
    bootstrap: BootstrapParams = BootstrapParams()
    robust: RobustnessParams = RobustnessParams()
