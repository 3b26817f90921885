"""Why a value is dropped or a row rejected: :class:`Dropped`, one shared instance per reason."""

from __future__ import annotations

from collections.abc import Callable


class Dropped:
    """
    A value that is not a usable identifier of its kind, with the reason it was dropped.

    Normalizers return it instead of raising, so one bad value never fails a batch; the reasons are
    counted per batch (``"email.invalid"``, ``"phone.no_country_code"``, ...).

    :param reason: ``"<key>.<why>"``, lowercase.
    """

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"Dropped({self.reason!r})"


#: ``(value, country) -> str | Dropped``: the normalized text ("" when the value is missing) or why it
#: was dropped; ``country`` is an upper-case ISO alpha-2 code or None. Cell preparers share the shape.
Normalizer = Callable[[object, str | None], str | Dropped]

# One shared instance per reason, so the hot path allocates nothing for a dropped value.
EXTERN_ID_INVALID = Dropped("extern_id.invalid")
EMAIL_INVALID = Dropped("email.invalid")
PHONE_INVALID = Dropped("phone.invalid")
PHONE_NO_COUNTRY_CODE = Dropped("phone.no_country_code")
GEN_UNKNOWN = Dropped("gen.unknown")
DOBY_INVALID = Dropped("doby.invalid")
DOBY_OUT_OF_RANGE = Dropped("doby.out_of_range")
DOBM_INVALID = Dropped("dobm.invalid")
DOBM_OUT_OF_RANGE = Dropped("dobm.out_of_range")
DOBD_INVALID = Dropped("dobd.invalid")
DOBD_OUT_OF_RANGE = Dropped("dobd.out_of_range")
LN_INVALID = Dropped("ln.invalid")
FN_INVALID = Dropped("fn.invalid")
FI_INVALID = Dropped("fi.invalid")
CT_INVALID = Dropped("ct.invalid")
CT_NOT_LATIN = Dropped("ct.not_latin")
ST_UNKNOWN = Dropped("st.unknown")
ZIP_INVALID = Dropped("zip.invalid")
COUNTRY_UNKNOWN = Dropped("country.unknown")
MADID_INVALID = Dropped("madid.invalid")
APPUID_INVALID = Dropped("appuid.invalid")
PAGEUID_INVALID = Dropped("pageuid.invalid")
LOOKALIKE_VALUE_INVALID = Dropped("lookalike_value.invalid")
LOOKALIKE_VALUE_NEGATIVE = Dropped("lookalike_value.negative")
DOB_INVALID = Dropped("dob.invalid")
PROCESSING_OPTIONS_INVALID = Dropped("data_processing_options.invalid")
PROCESSING_COUNTRY_INVALID = Dropped("data_processing_options_country.invalid")
PROCESSING_STATE_INVALID = Dropped("data_processing_options_state.invalid")

#: Every reason a value can be dropped for: the keys of :attr:`PreparedBatch.dropped`.
DROP_REASONS: tuple[str, ...] = tuple(
    dropped.reason
    for dropped in (
        EXTERN_ID_INVALID,
        EMAIL_INVALID,
        PHONE_INVALID,
        PHONE_NO_COUNTRY_CODE,
        GEN_UNKNOWN,
        DOBY_INVALID,
        DOBY_OUT_OF_RANGE,
        DOBM_INVALID,
        DOBM_OUT_OF_RANGE,
        DOBD_INVALID,
        DOBD_OUT_OF_RANGE,
        DOB_INVALID,
        LN_INVALID,
        FN_INVALID,
        FI_INVALID,
        CT_INVALID,
        CT_NOT_LATIN,
        ST_UNKNOWN,
        ZIP_INVALID,
        COUNTRY_UNKNOWN,
        MADID_INVALID,
        APPUID_INVALID,
        PAGEUID_INVALID,
        LOOKALIKE_VALUE_INVALID,
        LOOKALIKE_VALUE_NEGATIVE,
        PROCESSING_OPTIONS_INVALID,
        PROCESSING_COUNTRY_INVALID,
        PROCESSING_STATE_INVALID,
    )
)
#: Why a whole row is rejected: the keys of :attr:`PreparedBatch.rejected_by_reason`.
ROW_NO_IDENTIFIER = "row.no_identifier"
ROW_NO_VALUE = "row.no_value"
ROW_INVALID_PROCESSING = "row.invalid_data_processing_options"
