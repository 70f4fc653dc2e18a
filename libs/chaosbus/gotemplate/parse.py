"""The parser: tokens into a tree of nodes, with Go's scoping of variables.

Besides Go's parse-time checks it makes the ones Go leaves to execution (argument
counts, arguments to non-functions, assignment to undeclared variables), so a bad
template is refused when it is loaded rather than when a pod needs it.
"""

from __future__ import annotations

from .errors import TemplateSyntaxError, line_col
from .fmt import go_quote
from .funcs import FUNCS
from .lex import K, Token
from .limits import MAX_DEPTH
from .nodes import (
    Action,
    Chain,
    Command,
    Control,
    Dot,
    Expr,
    Field,
    Func,
    Literal,
    Node,
    Pipe,
    Text,
    Variable,
)

_OPERAND_START = {
    K.BOOL,
    K.DOT,
    K.FIELD,
    K.IDENT,
    K.NUMBER,
    K.NIL,
    K.STRING,
    K.VARIABLE,
    K.LPAREN,
}


class Parser:
    """Recursive descent over the tokens; parse() returns the top-level nodes."""

    def __init__(self, tokens: list[Token], text: str, name: str) -> None:
        self.tokens = tokens
        self.text = text
        self.name = name
        self.i = 0
        self.vars = ["$"]  # variables in scope, as Go's parser tracks them
        self.depth = 0

    def error(self, pos: int, reason: str) -> TemplateSyntaxError:
        line, column = line_col(self.text, pos)
        return TemplateSyntaxError(reason, template=self.name, line=line, column=column)

    def describe(self, tok: Token) -> str:
        if tok.kind is K.EOF:
            return "EOF"
        if tok.kind is K.KEYWORD:
            return f"<{tok.value}>"
        return go_quote(self.text[tok.pos : tok.end])

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        self.i += 1
        return self.tokens[self.i - 1]

    def peek_ns(self) -> Token:
        while self.tokens[self.i].kind is K.SPACE:
            self.i += 1
        return self.tokens[self.i]

    def next_ns(self) -> Token:
        self.peek_ns()
        return self.next()

    def expect_right(self, context: str) -> None:
        tok = self.next_ns()
        if tok.kind is not K.RIGHT:
            raise self.error(tok.pos, f"unexpected {self.describe(tok)} in {context}")

    def nest(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(tok.pos, f"nested more than {MAX_DEPTH} levels deep")

    def parse(self) -> tuple[Node, ...]:
        nodes, stop = self.parse_list()
        if stop is not None:
            raise self.error(stop.pos, f"unexpected {{{{{stop.value}}}}}")
        return nodes

    def parse_list(self) -> tuple[tuple[Node, ...], Token | None]:
        """Nodes up to EOF (None) or to an `else`/`end` keyword (returned, consumed)."""
        nodes: list[Node] = []
        while True:
            tok = self.next()
            if tok.kind is K.EOF:
                self.i -= 1
                return tuple(nodes), None
            if tok.kind is K.TEXT:
                nodes.append(Text(tok.value))
                continue
            kw = self.peek_ns()  # tok is `{{`
            if kw.kind is not K.KEYWORD:
                nodes.append(Action(self.parse_pipeline("command", K.RIGHT)))
                continue
            self.next()
            if kw.value in ("end", "else"):
                return tuple(nodes), kw
            if kw.value not in ("if", "range", "with"):
                raise self.error(kw.pos, f"{{{{{kw.value}}}}} is not supported")
            nodes.append(self.parse_control(kw))

    def parse_control(self, kw: Token) -> Control:
        kind = kw.value
        self.nest(kw)
        mark = len(self.vars)  # variables declared in here end at its {{end}}
        try:
            pipe = self.parse_pipeline(kind, K.RIGHT)
            body, stop = self.parse_list()
            else_body = None
            if stop is not None and stop.value == "else":
                nxt = self.peek_ns()
                if kind != "range" and nxt.kind is K.KEYWORD and nxt.value == kind:
                    # `{{else if}}` is `{{else}}{{if}}` whose {{end}} closes both.
                    self.next()
                    return Control(kind, pipe, body, (self.parse_control(nxt),))
                self.expect_right("else")
                else_body, stop = self.parse_list()
                if stop is not None and stop.value != "end":
                    raise self.error(stop.pos, "expected {{end}}; found {{else}}")
            if stop is None:
                raise self.error(kw.pos, f"unexpected EOF: {{{{{kind}}}}} has no {{{{end}}}}")
            self.expect_right("end")
            return Control(kind, pipe, body, else_body)
        finally:
            del self.vars[mark:]
            self.depth -= 1

    def parse_decl(self, context: str) -> tuple[list[Token], bool]:
        """`$x :=`, `$x =` or (range only) `$i, $v :=` at the start of a pipeline."""
        save = self.i
        if self.peek_ns().kind is not K.VARIABLE:
            return [], False
        names = [self.next()]
        sep = self.peek_ns()
        if sep.kind is K.COMMA:
            if context != "range":
                raise self.error(sep.pos, f"too many declarations in {context}")
            self.next()
            second = self.next_ns()
            if second.kind is not K.VARIABLE:
                raise self.error(second.pos, "range can only initialize variables")
            names.append(second)
            sep = self.peek_ns()
            if sep.kind not in (K.DECLARE, K.ASSIGN):
                raise self.error(
                    sep.pos, f"expected := or = in {context}, not {self.describe(sep)}"
                )
        elif sep.kind not in (K.DECLARE, K.ASSIGN):
            self.i = save
            return [], False
        self.next()
        if sep.kind is K.ASSIGN:
            for var in names:
                if var.value not in self.vars:
                    raise self.error(var.pos, f'undefined variable "{var.value}"')
        return names, sep.kind is K.ASSIGN

    def parse_pipeline(self, context: str, end: K) -> Pipe:
        start = self.peek_ns()
        decl, is_assign = self.parse_decl(context)
        cmds: list[Command] = []
        after_pipe = False
        while True:
            tok = self.peek_ns()
            if tok.kind in (K.RIGHT, K.RPAREN):
                if tok.kind is not end:
                    reason = "unclosed left paren" if end is K.RPAREN else "unexpected right paren"
                    raise self.error(tok.pos, reason)
                if after_pipe:
                    raise self.error(tok.pos, "missing command after |")
                self.next()
                break
            if tok.kind not in _OPERAND_START:
                raise self.error(tok.pos, f"unexpected {self.describe(tok)} in {context}")
            cmd, after_pipe = self.parse_command()
            cmds.append(cmd)
        if not cmds:
            raise self.error(start.pos, f"missing value for {context}")
        for stage, cmd in enumerate(cmds, 1):
            self.check_command(cmd, stage)
        if not is_assign:
            self.vars.extend(var.value for var in decl)
        src = self.text[start.pos : tok.pos].strip()
        return Pipe(start.pos, src, tuple(v.value for v in decl), is_assign, tuple(cmds))

    def check_command(self, cmd: Command, stage: int) -> None:
        """What Go checks while executing, checked once here."""
        head = cmd.args[0]
        if isinstance(head, Func):
            self.check_arity(head, len(cmd.args) - 1 + (stage > 1))
        elif stage > 1:
            raise self.error(head.pos, f"non executable command in pipeline stage {stage}")
        elif len(cmd.args) > 1:
            raise self.error(cmd.args[1].pos, f"can't give argument to non-function {head.src}")
        elif isinstance(head, Literal) and head.value is None:
            raise self.error(head.pos, "nil is not a command")
        for arg in cmd.args[1:]:
            if isinstance(arg, Func):  # a function as an argument is called without any
                self.check_arity(arg, 0)

    def check_arity(self, func: Func, count: int) -> None:
        _, low, high = FUNCS[func.name]
        if count < low or (high is not None and count > high):
            want = f"{low}" if low == high else f"at least {low}"
            raise self.error(
                func.pos, f"wrong number of args for {func.name}: want {want} got {count}"
            )

    def parse_command(self) -> tuple[Command, bool]:
        """Operands up to `|` (consumed; True) or `}}`/`)` (not consumed; False)."""
        args: list[Expr] = []
        while True:
            tok = self.peek_ns()
            if args and tok.kind in (K.PIPE, K.RIGHT, K.RPAREN):
                piped = tok.kind is K.PIPE
                if piped:
                    self.next()
                break
            operand = self.parse_operand()
            if operand is None:
                raise self.error(tok.pos, f"unexpected {self.describe(tok)} in operand")
            args.append(operand)
            after = self.peek()
            if after.kind not in (K.SPACE, K.PIPE, K.RIGHT, K.RPAREN):
                raise self.error(after.pos, f"unexpected {self.describe(after)} in operand")
        src = self.text[args[0].pos : tok.pos].strip()
        return Command(args[0].pos, src, tuple(args)), piped

    def parse_operand(self) -> Expr | None:
        term = self.parse_term()
        if term is None or self.peek().kind is not K.FIELD:
            return term
        names: list[str] = []
        while self.peek().kind is K.FIELD:  # no space between: a chain
            names.append(self.next().value)
        src = self.text[term.pos : self.tokens[self.i - 1].end]
        if isinstance(term, Field):
            return Field(term.pos, src, term.names + tuple(names))
        if isinstance(term, Variable):
            return Variable(term.pos, src, term.name, term.names + tuple(names))
        if isinstance(term, Pipe):
            return Chain(term.pos, src, term, tuple(names))
        raise self.error(term.pos, f"unexpected . after term {go_quote(term.src)}")

    def parse_term(self) -> Expr | None:
        tok = self.peek_ns()
        src = self.text[tok.pos : tok.end]
        kind = tok.kind
        if kind is K.LPAREN:
            self.next()
            self.nest(tok)
            pipe = self.parse_pipeline("parenthesized pipeline", K.RPAREN)
            self.depth -= 1
            closing = self.tokens[self.i - 1]
            return Pipe(
                tok.pos, self.text[tok.pos : closing.end], pipe.decl, pipe.is_assign, pipe.cmds
            )
        if kind not in _OPERAND_START:
            return None
        self.next()
        if kind is K.IDENT:
            if tok.value not in FUNCS:
                raise self.error(tok.pos, f'function "{tok.value}" not defined')
            return Func(tok.pos, src, tok.value)
        if kind is K.VARIABLE:
            if tok.value not in self.vars:
                raise self.error(tok.pos, f'undefined variable "{tok.value}"')
            return Variable(tok.pos, src, tok.value, ())
        if kind is K.FIELD:
            return Field(tok.pos, src, (tok.value,))
        if kind is K.DOT:
            return Dot(tok.pos, src)
        return Literal(tok.pos, src, tok.value)  # string, number, bool, nil
