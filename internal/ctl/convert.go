package ctl

import (
	"context"
	"errors"
	"fmt"

	"github.com/directord/directord/internal/config"
	"github.com/directord/directord/internal/convert"
	"github.com/directord/directord/internal/status"
)

// runConvert prints FILE, a keepalived.conf, as directord's TOML; what it
// could not carry over exactly goes to stderr, FILE:LINE: keyword: what
// happened. It fails when the printed file does not pass directord -t's
// checks of the file.
func runConvert(_ context.Context, _ *status.Client, o opts) error {
	if len(o.args) != 1 {
		return usageError("usage: directorctl convert [--config-id ID] FILE")
	}
	res, err := convert.File(o.args[0], convert.Options{ConfigID: o.configID})
	if err != nil {
		return err
	}
	if _, err := o.out.Write(res.TOML); err != nil {
		return err
	}
	for _, n := range res.Notes {
		fmt.Fprintln(o.errOut, n)
	}
	name := "(converted " + o.args[0] + ")"
	if _, err := config.Parse(name, res.TOML); err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				fmt.Fprintln(o.errOut, p)
			}
			return fmt.Errorf("the converted file does not pass directord -t: %d problem(s) to fix by hand", len(ce.Problems))
		}
		return err
	}
	return nil
}
