"""An in-dock message strip styled like QGIS's message bar, but with wrapped, selectable text.

A QgsMessageBar inside a narrow dock truncates long messages to one line, and engine messages (what
went wrong and what to do about it) are often two or three lines; they must be readable in full.
"""
from __future__ import annotations

from qgis.core import Qgis, QgsApplication
from qgis.PyQt.QtCore import QSize, Qt
from qgis.PyQt.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton

_STYLE = {
    Qgis.MessageLevel.Info: ("/mIconInfo.svg", "#e7f5fe", "#b9cfe4", "black"),
    Qgis.MessageLevel.Warning: ("/mIconWarning.svg", "#ffe49c", "#e0aa00", "black"),
    Qgis.MessageLevel.Critical: ("/mIconCritical.svg", "#f6d5d5", "#d65253", "black"),
    Qgis.MessageLevel.Success: ("/mIconSuccess.svg", "#dcf7dd", "#55a357", "black"),
}


class Notice(QFrame):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("somNotice")
        self.level = None
        lay = QHBoxLayout(self)
        lay.setContentsMargins(6, 4, 4, 4)
        self.icon = QLabel()
        self.icon.setFixedSize(QSize(20, 20))
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = QToolButton()
        close.setIcon(QgsApplication.getThemeIcon("/mIconClose.svg"))
        close.setAutoRaise(True)
        close.setToolTip("Dismiss")
        close.clicked.connect(self.clear)
        lay.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        lay.addWidget(self.label, 1)
        lay.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(self, text: str, level=Qgis.MessageLevel.Info) -> None:
        icon, bg, border, fg = _STYLE.get(level, _STYLE[Qgis.MessageLevel.Info])
        self.level = level
        self.setStyleSheet(f"QFrame#somNotice {{ background-color: {bg}; border: 1px solid {border}; "
                           f"border-radius: 3px; }} QFrame#somNotice QLabel {{ color: {fg}; }}")
        self.icon.setPixmap(QgsApplication.getThemeIcon(icon).pixmap(18, 18))
        self.label.setText(text)
        self.show()

    def text(self) -> str:
        return self.label.text() if not self.isHidden() else ""

    def clear(self) -> None:
        self.level = None
        self.label.clear()
        self.hide()
