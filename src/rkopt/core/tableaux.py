"""The explicit Runge–Kutta methods rkopt ships, looked up by name.

Coefficients are written as exact fractions (strings) where the literature gives them so, and as
the published high-precision decimals otherwise. Every tableau is verified against its order
conditions when this module is imported (``ButcherTableau.__post_init__``).
"""

from __future__ import annotations

from rkopt.core.tableau import ButcherTableau

EULER = ButcherTableau(
    name="euler",
    c=(0,),
    a=((),),
    b=(1,),
    order=1,
    reference="Euler (1768): explicit Euler; on gradient flow this is gradient descent.",
)

MIDPOINT = ButcherTableau(
    name="midpoint",
    c=(0, "1/2"),
    a=((), ("1/2",)),
    b=(0, 1),
    order=2,
    reference="Runge (1895): explicit midpoint rule; Hairer, Nørsett & Wanner I, §II.1.",
)

HEUN = ButcherTableau(
    name="heun",
    c=(0, 1),
    a=((), (1,)),
    b=("1/2", "1/2"),
    order=2,
    reference="Heun (1900): explicit trapezoidal rule; Hairer, Nørsett & Wanner I, §II.1.",
)

RALSTON = ButcherTableau(
    name="ralston",
    c=(0, "2/3"),
    a=((), ("2/3",)),
    b=("1/4", "3/4"),
    order=2,
    reference="Ralston (1962), Math. Comp. 16: the 2-stage method of minimal error bound.",
)

KUTTA3 = ButcherTableau(
    name="kutta3",
    c=(0, "1/2", 1),
    a=((), ("1/2",), (-1, 2)),
    b=("1/6", "2/3", "1/6"),
    order=3,
    reference="Kutta (1901): third-order method; Hairer, Nørsett & Wanner I, Table II.1.1.",
)

HEUN3 = ButcherTableau(
    name="heun3",
    c=(0, "1/3", "2/3"),
    a=((), ("1/3",), (0, "2/3")),
    b=("1/4", 0, "3/4"),
    order=3,
    reference="Heun (1900): third-order method; Hairer, Nørsett & Wanner I, Table II.1.1.",
)

SSPRK3 = ButcherTableau(
    name="ssprk3",
    c=(0, 1, "1/2"),
    a=((), (1,), ("1/4", "1/4")),
    b=("1/6", "1/6", "2/3"),
    order=3,
    reference="Shu & Osher (1988), J. Comput. Phys. 77: strong-stability-preserving RK3.",
)

RK4 = ButcherTableau(
    name="rk4",
    c=(0, "1/2", "1/2", 1),
    a=((), ("1/2",), (0, "1/2"), (0, 0, 1)),
    b=("1/6", "1/3", "1/3", "1/6"),
    order=4,
    reference="Kutta (1901): the classic fourth-order Runge–Kutta method.",
)

RK38 = ButcherTableau(
    name="rk38",
    c=(0, "1/3", "2/3", 1),
    a=((), ("1/3",), ("-1/3", 1), (1, -1, 1)),
    b=("1/8", "3/8", "3/8", "1/8"),
    order=4,
    reference="Kutta (1901): the 3/8 rule; Hairer, Nørsett & Wanner I, Table II.1.2.",
)

HEUN_EULER = ButcherTableau(
    name="heun_euler",
    c=(0, 1),
    a=((), (1,)),
    b=("1/2", "1/2"),
    b_hat=(1, 0),
    order=2,
    embedded_order=1,
    reference="Heun's method with explicit Euler embedded: the simplest 2(1) pair.",
)

BOGACKI_SHAMPINE = ButcherTableau(
    name="bogacki_shampine",
    c=(0, "1/2", "3/4", 1),
    a=((), ("1/2",), (0, "3/4"), ("2/9", "1/3", "4/9")),
    b=("2/9", "1/3", "4/9", 0),
    b_hat=("7/24", "1/4", "1/3", "1/8"),
    order=3,
    embedded_order=2,
    reference="Bogacki & Shampine (1989), Appl. Math. Lett. 2: a 3(2) pair of Runge–Kutta formulas.",
)

FEHLBERG = ButcherTableau(
    name="fehlberg",
    c=(0, "1/4", "3/8", "12/13", 1, "1/2"),
    a=(
        (),
        ("1/4",),
        ("3/32", "9/32"),
        ("1932/2197", "-7200/2197", "7296/2197"),
        ("439/216", -8, "3680/513", "-845/4104"),
        ("-8/27", 2, "-3544/2565", "1859/4104", "-11/40"),
    ),
    b=("25/216", 0, "1408/2565", "2197/4104", "-1/5", 0),
    b_hat=("16/135", 0, "6656/12825", "28561/56430", "-9/50", "2/55"),
    order=4,
    embedded_order=5,
    reference="Fehlberg (1969), NASA TR R-315: RKF4(5); the fourth-order solution is propagated.",
)

CASH_KARP = ButcherTableau(
    name="cash_karp",
    c=(0, "1/5", "3/10", "3/5", 1, "7/8"),
    a=(
        (),
        ("1/5",),
        ("3/40", "9/40"),
        ("3/10", "-9/10", "6/5"),
        ("-11/54", "5/2", "-70/27", "35/27"),
        ("1631/55296", "175/512", "575/13824", "44275/110592", "253/4096"),
    ),
    b=("37/378", 0, "250/621", "125/594", 0, "512/1771"),
    b_hat=("2825/27648", 0, "18575/48384", "13525/55296", "277/14336", "1/4"),
    order=5,
    embedded_order=4,
    reference="Cash & Karp (1990), ACM TOMS 16: a variable order Runge–Kutta method, 5(4) pair.",
)

DORMAND_PRINCE = ButcherTableau(
    name="dormand_prince",
    c=(0, "1/5", "3/10", "4/5", "8/9", 1, 1),
    a=(
        (),
        ("1/5",),
        ("3/40", "9/40"),
        ("44/45", "-56/15", "32/9"),
        ("19372/6561", "-25360/2187", "64448/6561", "-212/729"),
        ("9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"),
        ("35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84"),
    ),
    b=("35/384", 0, "500/1113", "125/192", "-2187/6784", "11/84", 0),
    b_hat=("5179/57600", 0, "7571/16695", "393/640", "-92097/339200", "187/2100", "1/40"),
    order=5,
    embedded_order=4,
    reference="Dormand & Prince (1980), J. Comput. Appl. Math. 6: RK5(4)7M (DOPRI5), FSAL.",
)

_TSIT5_B = (
    "0.09646076681806522951816731316512876333711995238157997181903319145764851595234062815396",
    "1/100",
    "0.4798896504144995747752495322905965199130404621990332488332634944254542060153074523509",
    "1.379008574103741893192274821856872770756462643091360525934940067397245698027561293331",
    "-3.290069515436080679901047585711363850115683290894936158531296799594813811049925401677",
    "2.324710524099773982415355918398765796109060233222962411944060046314465391054716027841",
)

TSITOURAS = ButcherTableau(
    name="tsitouras",
    c=(
        0,
        "161/1000",
        "327/1000",
        "9/10",
        "0.9800255409045096857298102862870245954942137979563024768854764293221195950761080302604",
        1,
        1,
    ),
    a=(
        (),
        ("161/1000",),
        (
            "-0.008480655492356988544426874250230774675121177393430391537369234245294192976164141156943",
            "0.3354806554923569885444268742502307746751211773934303915373692342452941929761641411569",
        ),
        (
            "2.897153057105493432130432594192938764924887287701866490314866693455023795137503079289",
            "-6.359448489975074843148159912383825625952700647415626703305928850207288721235210244366",
            "4.362295432869581411017727318190886861027813359713760212991062156752264926097707165077",
        ),
        (
            "5.325864828439256604428877920840511317836476253097040101202360397727981648835607691791",
            "-11.74888356406282787774717033978577296188744178259862899288666928009020615663593781589",
            "7.495539342889836208304604784564358155658679161518186721010132816213648793440552049753",
            "-0.09249506636175524925650207933207191611349983406029535244034750452930469056411389539635",
        ),
        (
            "5.861455442946420028659251486982647890394337666164814434818157239052507339770711679748",
            "-12.92096931784710929170611868178335939541780751955743459166312250439928519268343184452",
            "8.159367898576158643180400794539253485181918321135053305748355423955009222648673734986",
            "-0.07158497328140099722453054252582973869127213147363544882721139659546372402303777878835",
            "-0.02826905039406838290900305721271224146717633626879770007617876201276764571291579142206",
        ),
        _TSIT5_B,
    ),
    b=(*_TSIT5_B, 0),
    b_hat=(
        "0.09468075576583945807478876255758922856117527357724631226139574065785592789071067303271",
        "0.009183565540343253096776363936645313759813746240984095238905939532922955247253608687270",
        "0.4877705284247615707855642599631228241516691959761363774365216240304071651579571959813",
        "1.234297566930478985655109673884237654035539930748192848315425833500484878378061439761",
        "-2.707712349983525454881109975059321670689605166938197378763992255714444407154902012702",
        "1.866628418170587035753719399566211498666255505244122593996591602841258328965767580089",
        "1/66",
    ),
    order=5,
    embedded_order=4,
    reference=(
        "Tsitouras (2011), Comput. Math. Appl. 62: Runge–Kutta pairs of order 5(4) satisfying only "
        "the first column simplifying assumption (Tsit5), FSAL."
    ),
)

TABLEAUX: dict[str, ButcherTableau] = {
    t.name: t
    for t in (
        EULER,
        MIDPOINT,
        HEUN,
        RALSTON,
        KUTTA3,
        HEUN3,
        SSPRK3,
        RK4,
        RK38,
        HEUN_EULER,
        BOGACKI_SHAMPINE,
        FEHLBERG,
        CASH_KARP,
        DORMAND_PRINCE,
        TSITOURAS,
    )
}
"""Every shipped tableau by its canonical name."""

ALIASES: dict[str, str] = {
    "gd": "euler",
    "explicit_euler": "euler",
    "trapezoid": "heun",
    "rk38_rule": "rk38",
    "three_eighths": "rk38",
    "bs3": "bogacki_shampine",
    "bs32": "bogacki_shampine",
    "rkf45": "fehlberg",
    "rk45": "dormand_prince",
    "dopri5": "dormand_prince",
    "ck54": "cash_karp",
    "tsit5": "tsitouras",
}
"""Other common names of the shipped tableaux."""


def get_tableau(tableau: str | ButcherTableau) -> ButcherTableau:
    """The tableau with this name (case-insensitive, '-' or '_'), or ``tableau`` itself if given one."""
    if isinstance(tableau, ButcherTableau):
        return tableau
    if not isinstance(tableau, str):
        raise TypeError(f"tableau must be a name or a ButcherTableau, got {type(tableau).__name__}")
    key = tableau.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in TABLEAUX:
        names = ", ".join(sorted(TABLEAUX))
        raise ValueError(
            f"unknown tableau {tableau!r}; valid names: {names} "
            f"(aliases: {', '.join(sorted(ALIASES))}), or pass a rkopt.ButcherTableau"
        )
    return TABLEAUX[key]
