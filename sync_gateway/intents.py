"""Gateway intents (PROTOCOL.md §12)."""
import enum

__all__ = ["Intents"]


class Intents(enum.IntFlag):
    """Every documented intent bit. ``DEFAULT`` is every non-privileged intent.

    ``DEFAULT`` leaves out the privileged ``GUILD_MEMBERS``, ``GUILD_PRESENCES`` and
    ``MESSAGE_CONTENT``; they must be switched on in the Developer Portal (Bot → Privileged Gateway
    Intents) before asking for them, or Discord closes with 4014.
    """

    GUILDS = 1 << 0
    GUILD_MEMBERS = 1 << 1
    GUILD_MODERATION = 1 << 2
    GUILD_EXPRESSIONS = 1 << 3
    GUILD_INTEGRATIONS = 1 << 4
    GUILD_WEBHOOKS = 1 << 5
    GUILD_INVITES = 1 << 6
    GUILD_VOICE_STATES = 1 << 7
    GUILD_PRESENCES = 1 << 8
    GUILD_MESSAGES = 1 << 9
    GUILD_MESSAGE_REACTIONS = 1 << 10
    GUILD_MESSAGE_TYPING = 1 << 11
    DIRECT_MESSAGES = 1 << 12
    DIRECT_MESSAGE_REACTIONS = 1 << 13
    DIRECT_MESSAGE_TYPING = 1 << 14
    MESSAGE_CONTENT = 1 << 15
    GUILD_SCHEDULED_EVENTS = 1 << 16
    AUTO_MODERATION_CONFIGURATION = 1 << 20
    AUTO_MODERATION_EXECUTION = 1 << 21
    GUILD_MESSAGE_POLLS = 1 << 24
    DIRECT_MESSAGE_POLLS = 1 << 25

    # Older names, still seen in other libraries' docs.
    GUILD_BANS = GUILD_MODERATION
    GUILD_EMOJIS_AND_STICKERS = GUILD_EXPRESSIONS

    # Aggregates (defined after the bits so they are aliases, not new members).
    ALL = 53608447
    PRIVILEGED = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT
    DEFAULT = ALL & ~PRIVILEGED
    NONE = 0

    @classmethod
    def from_names(cls, names: str) -> "Intents":
        """Parse ``"GUILDS,GUILD_MESSAGES"`` (or ``"default"``, ``"all"``, ``"none"``, ``|``/``+`` separators)."""
        value = cls(0)
        for raw in names.replace("|", ",").replace("+", ",").split(","):
            name = raw.strip().upper()
            if not name:
                continue
            try:
                value |= cls[name]
            except KeyError:
                raise ValueError(f"unknown intent {raw.strip()!r}; known: {', '.join(_names())}") from None
        return value

    def privileged_names(self) -> "list[str]":
        return [m.name for m in (Intents.GUILD_MEMBERS, Intents.GUILD_PRESENCES, Intents.MESSAGE_CONTENT) if self & m and m.name]


def _names() -> "list[str]":
    return [n for n, m in Intents.__members__.items() if m.value and (m.value & (m.value - 1)) == 0]
